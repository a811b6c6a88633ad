//! Store capacity: lease + checkpoint round trips per second and lease latency under contention,
//! against pgbench's simple-update on the same server as the physical limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier_core::{Ordering, RangeKind};
use courier_store::{LeaseRequest, Migrator, PlanRequest, RouteSpec, Store, StoreConfig};

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
    let database = crate::fresh_database(server_url, "bench_store").await?;
    let config = StoreConfig {
        pool_size: tasks,
        ..StoreConfig::new(crate::with_database(server_url, &database))
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
            let request = LeaseRequest {
                route: "cap".into(),
                owner: format!("bench-{task}"),
                max_ranges: 1,
                ttl: Duration::from_secs(60),
                ordering: Ordering::None,
                kind: RangeKind::Live,
            };
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
    let store = Arc::new(store);
    drop(store);
    crate::drop_database(server_url, &database).await;
    Ok(Capacity {
        tasks,
        round_trips_per_second: round_trips as f64 / elapsed,
        lease_p50_ms: crate::percentile_f64(&latencies, 0.50),
        lease_p99_ms: crate::percentile_f64(&latencies, 0.99),
    })
}

/// pgbench's built-in simple-update (`-N`) with `clients` clients for `seconds`, on a scratch database.
pub async fn pgbench(server_url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let binary = pgbench_binary().context(
        "pgbench not found (Debian's postgresql package ships it under /usr/lib/postgresql/*/bin)",
    )?;
    let database = crate::fresh_database(server_url, "bench_pgbench").await?;
    let url = crate::with_database(server_url, &database);
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
    crate::drop_database(server_url, &database).await;
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
