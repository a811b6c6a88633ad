//! What a run cost the machine: CPU seconds of the whole machine, of this process (courier in process
//! and the sink), of PostgreSQL (every `postgres` process, and the backends that exited meanwhile) and
//! of the Kafka broker, read from /proc.

use std::time::Instant;

/// Clock ticks per second for /proc/stat and /proc/self/stat (USER_HZ; 100 on Linux).
const TICKS: f64 = 100.0;

#[derive(Clone, Copy)]
pub struct CpuSnapshot {
    machine_busy_ticks: u64,
    process_ticks: u64,
    services: Services,
    at: Instant,
}

pub fn cpu() -> CpuSnapshot {
    CpuSnapshot {
        machine_busy_ticks: machine_busy(),
        process_ticks: process(),
        services: services(),
        at: Instant::now(),
    }
}

pub struct CpuUsed {
    pub machine_seconds: f64,
    pub process_seconds: f64,
    pub postgres_seconds: f64,
    pub broker_seconds: f64,
    /// Bytes the broker wrote to sockets and files (`wchar` of /proc/PID/io, which counts `sendfile`):
    /// during a drain, what it sent to consumers, so read-once can be checked from the broker's side.
    pub broker_bytes_written: u64,
    pub wall_seconds: f64,
}

impl CpuSnapshot {
    pub fn since(&self) -> CpuUsed {
        let services = services();
        let seconds = |now: u64, then: u64| now.saturating_sub(then) as f64 / TICKS;
        CpuUsed {
            machine_seconds: seconds(machine_busy(), self.machine_busy_ticks),
            process_seconds: seconds(process(), self.process_ticks),
            postgres_seconds: seconds(services.postgres, self.services.postgres),
            broker_seconds: seconds(services.broker, self.services.broker),
            broker_bytes_written: services
                .broker_written
                .saturating_sub(self.services.broker_written),
            wall_seconds: self.at.elapsed().as_secs_f64(),
        }
    }
}

/// CPU ticks of the services courier leans on, so a report can say where the machine's CPU went.
#[derive(Clone, Copy, Default)]
struct Services {
    /// Every live `postgres` process, plus what exited backends left in their parent's account.
    postgres: u64,
    /// The Kafka broker's JVM (a `java` process running `kafka.Kafka`).
    broker: u64,
    /// Bytes the broker's JVM wrote (see [`CpuUsed::broker_bytes_written`]).
    broker_written: u64,
    broker_found: bool,
}

/// What the local Kafka broker's process has written so far (see [`CpuUsed::broker_bytes_written`]);
/// `None` when no broker runs on this machine.
pub fn broker_bytes_written() -> Option<u64> {
    let services = services();
    services.broker_found.then_some(services.broker_written)
}

fn services() -> Services {
    let mut services = Services::default();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return services;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let command = head.split_once('(').map_or("", |(_, command)| command);
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // After the ')': utime, stime, cutime, cstime are fields 12 to 15 (counting from 1 at `state`).
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        let (own, children) = (field(11) + field(12), field(13) + field(14));
        if command == "postgres" {
            services.postgres += own + children;
        } else if command == "java"
            && std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(11).any(|w| w == b"kafka.Kafka"))
        {
            services.broker += own;
            services.broker_found = true;
            services.broker_written += std::fs::read_to_string(entry.path().join("io"))
                .ok()
                .and_then(|io| {
                    io.lines()
                        .find_map(|line| line.strip_prefix("wchar:"))
                        .and_then(|value| value.trim().parse::<u64>().ok())
                })
                .unwrap_or(0);
        }
    }
    services
}

fn machine_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait.
    fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum()
}

fn process() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the ')'.
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    utime + stime
}

pub fn describe() -> String {
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpus}), {:.0} GiB RAM",
        memory_kb as f64 / 1024.0 / 1024.0
    )
}
