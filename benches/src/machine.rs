//! What a run cost the machine: CPU seconds of the whole machine (broker, PostgreSQL and sink
//! included) and of this process, read from /proc.

use std::time::Instant;

/// Clock ticks per second for /proc/stat and /proc/self/stat (USER_HZ; 100 on Linux).
const TICKS: f64 = 100.0;

#[derive(Clone, Copy)]
pub struct CpuSnapshot {
    machine_busy_ticks: u64,
    process_ticks: u64,
    at: Instant,
}

pub fn cpu() -> CpuSnapshot {
    CpuSnapshot {
        machine_busy_ticks: machine_busy(),
        process_ticks: process(),
        at: Instant::now(),
    }
}

pub struct CpuUsed {
    pub machine_seconds: f64,
    pub process_seconds: f64,
    pub wall_seconds: f64,
}

impl CpuSnapshot {
    pub fn since(&self) -> CpuUsed {
        CpuUsed {
            machine_seconds: machine_busy().saturating_sub(self.machine_busy_ticks) as f64 / TICKS,
            process_seconds: process().saturating_sub(self.process_ticks) as f64 / TICKS,
            wall_seconds: self.at.elapsed().as_secs_f64(),
        }
    }
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
