//! Section 5: store capacity. Lease + checkpoint round trips per second and lease latency under
//! contention, against pgbench's simple-update on the same server as the physical limit.
//!
//! Owns: the section, [`capacity`] and [`pgbench`].

use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier_core::{Ordering, RangeKind};
use courier_store::{LeaseRequest, Migrator, PlanRequest, RouteSpec, Store, StoreConfig};

use crate::report::{cells, percentile, Goal, Report};
use crate::Bench;

/// Lease latency target, with up to 64 contending tasks.
const LEASE_P99_MS: f64 = 5.0;

pub async fn section(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let seconds = bench.args.seconds;
    report.line(format_args!(
        "## Store capacity: lease(1) + checkpoint round trips, {seconds} s per run\n"
    ));
    report.header(&[
        "contending tasks",
        "round trips/s",
        "store txns/s",
        "lease p50 ms",
        "lease p99 ms",
        "target",
        "met",
    ]);
    let mut best_round_trips: f64 = 0.0;
    for tasks in [1usize, 8, 32, 64] {
        eprintln!("bench: store capacity with {tasks} task(s)");
        let capacity = capacity(&bench.server, tasks, Duration::from_secs(seconds)).await?;
        best_round_trips = best_round_trips.max(capacity.round_trips_per_second);
        let [target, met] =
            cells(&[Goal::AtMost(LEASE_P99_MS).check(capacity.lease_p99_ms, " ms lease p99")]);
        report.row(&[
            capacity.tasks.to_string(),
            format!("{:.0}", capacity.round_trips_per_second),
            format!("{:.0}", capacity.round_trips_per_second * 2.0),
            format!("{:.2}", capacity.lease_p50_ms),
            format!("{:.2}", capacity.lease_p99_ms),
            target,
            met,
        ]);
    }
    match pgbench(&bench.server, 8, seconds).await {
        Ok(tps) => report.line(format_args!(
            "\npgbench simple-update (-N), 8 clients, same server: {tps:.0} tps. courier's best: {:.0} store txns/s = {:.2}x pgbench.\n",
            best_round_trips * 2.0,
            best_round_trips * 2.0 / tps
        )),
        Err(error) => report.line(format_args!("\npgbench could not run: {error:#}\n")),
    }
    Ok(())
}

pub struct Capacity {
    pub tasks: usize,
    pub round_trips_per_second: f64,
    pub lease_p50_ms: f64,
    pub lease_p99_ms: f64,
}

/// `tasks` concurrent loops of lease(1) + checkpoint for `duration`, on ranges planned in advance.
pub async fn capacity(
    server_url: &str,
    tasks: usize,
    duration: Duration,
) -> anyhow::Result<Capacity> {
    let database = crate::db::fresh(server_url, "bench_store").await?;
    let config = StoreConfig {
        pool_size: tasks,
        ..StoreConfig::new(crate::db::with_database(server_url, &database))
    };
    Migrator::embedded().run(&config).await?;
    let store = Store::connect(&config).await?;
    store
        .ensure_route(
            &RouteSpec {
                name: "cap".into(),
                topic: "t".into(),
                destination: "d".into(),
            },
            &[],
        )
        .await?;
    let partitions: Vec<(i32, i64)> = (0..16).map(|p| (p, 0)).collect();
    store.ensure_partitions("cap", &partitions).await?;
    for (partition, _) in &partitions {
        store
            .plan(&PlanRequest {
                route: "cap".into(),
                partition: *partition,
                high_watermark: 1_000_000,
                range_size: 100,
                max_new_ranges: 5_000,
                max_tail_age: Duration::ZERO,
            })
            .await?;
    }
    let started = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let store = store.clone();
        loops.spawn(async move {
            let request = LeaseRequest::one_route(
                "cap",
                Ordering::None,
                &format!("bench-{task}"),
                1,
                Duration::from_secs(60),
                RangeKind::Live,
            );
            let mut latencies = Vec::new();
            let mut round_trips = 0u64;
            while started.elapsed() < duration {
                let asked = Instant::now();
                let leases = store.lease(&request).await?;
                latencies.push(asked.elapsed().as_secs_f64() * 1000.0);
                for lease in &leases {
                    store.checkpoint(lease).await?;
                    round_trips += 1;
                }
            }
            anyhow::Ok((round_trips, latencies))
        });
    }
    let mut round_trips = 0;
    let mut latencies = Vec::new();
    while let Some(result) = loops.join_next().await {
        let (n, mut l) = result??;
        round_trips += n;
        latencies.append(&mut l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    drop(store);
    crate::db::discard(server_url, &database).await;
    Ok(Capacity {
        tasks,
        round_trips_per_second: round_trips as f64 / elapsed,
        lease_p50_ms: percentile(&latencies, 0.50),
        lease_p99_ms: percentile(&latencies, 0.99),
    })
}

/// pgbench's built-in simple-update (`-N`) with `clients` clients for `seconds`, on a scratch database.
pub async fn pgbench(server_url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let binary = pgbench_binary().context(
        "pgbench not found (Debian's postgresql package ships it under /usr/lib/postgresql/*/bin)",
    )?;
    let database = crate::db::fresh(server_url, "bench_pgbench").await?;
    let url = crate::db::with_database(server_url, &database);
    let init = tokio::process::Command::new(&binary)
        .args(["-i", "-q", "-s", "10", &url])
        .output()
        .await?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let threads = clients.min(2).to_string();
    let run = tokio::process::Command::new(&binary)
        .args([
            "-N",
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            &threads,
            "-T",
            &seconds.to_string(),
            &url,
        ])
        .output()
        .await?;
    anyhow::ensure!(
        run.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    crate::db::discard(server_url, &database).await;
    stdout
        .lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps line in pgbench output: {stdout}"))
}

fn pgbench_binary() -> Option<std::path::PathBuf> {
    if let Ok(path) = which("pgbench") {
        return Some(path);
    }
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/pgbench"))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.exists())
        })
        .ok_or(())
}
