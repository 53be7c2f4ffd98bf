//! `GET /metrics`: what the sandbox uses of CPU, memory and disk, as envd reports it.

use std::sync::Mutex;

use axum::{Json, extract::State};
use serde::Serialize;

use crate::AgentState;

#[derive(Debug, Serialize)]
pub struct Metrics {
    ts: i64,
    cpu_count: u32,
    cpu_used_pct: f32,
    mem_total: u64,
    mem_used: u64,
    mem_cache: u64,
    mem_total_mib: u64,
    mem_used_mib: u64,
    disk_used: u64,
    disk_total: u64,
}

/// CPU time counters from `/proc/stat`: (busy, total) jiffies.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The previous CPU sample, so each call reports use since the last one.
static LAST_CPU: Mutex<Option<(u64, u64)>> = Mutex::new(None);

fn cpu_used_pct() -> f32 {
    let Some((busy, total)) = cpu_times() else {
        return 0.0;
    };
    let mut last = LAST_CPU.lock().unwrap_or_else(|e| e.into_inner());
    let (prev_busy, prev_total) = last.replace((busy, total)).unwrap_or((0, 0));
    let (busy, total) = (
        busy.saturating_sub(prev_busy),
        total.saturating_sub(prev_total),
    );
    if total == 0 {
        return 0.0;
    }
    ((busy as f64 / total as f64 * 10_000.0).round() / 100.0) as f32
}

/// (total, used, cached) bytes from `/proc/meminfo`.
fn memory() -> (u64, u64, u64) {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    };
    let total = field("MemTotal");
    let available = field("MemAvailable");
    (total, total.saturating_sub(available), field("Cached"))
}

pub async fn metrics(State(_state): State<AgentState>) -> Json<Metrics> {
    let (mem_total, mem_used, mem_cache) = memory();
    let (disk_used, disk_total) = rustix::fs::statvfs("/")
        .map(|s| {
            let total = s.f_blocks * s.f_frsize;
            (total.saturating_sub(s.f_bavail * s.f_frsize), total)
        })
        .unwrap_or((0, 0));
    Json(Metrics {
        ts: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        cpu_count: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        cpu_used_pct: cpu_used_pct(),
        mem_total,
        mem_used,
        mem_cache,
        mem_total_mib: mem_total / (1024 * 1024),
        mem_used_mib: mem_used / (1024 * 1024),
        disk_used,
        disk_total,
    })
}
