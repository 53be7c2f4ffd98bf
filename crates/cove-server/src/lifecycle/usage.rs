//! What a running sandbox uses, with its CPU use in percent over the time since it was last
//! asked.

use std::time::Duration;

use super::{Lifecycle, Live};
use crate::clock;

impl Lifecycle {
    /// What a sandbox uses now, with its CPU use in percent of its CPUs since the last call
    /// (or since it started); `None` when the backend cannot tell.
    pub async fn usage(&self, live: &Live) -> Option<(cove_runtime::Usage, f64)> {
        let handle = live.handle();
        let usage = self.blocking(move |r| r.usage(&handle)).await.ok()?;
        let now = std::time::Instant::now();
        let (started_at, cpu_count) = live.read(|r| (r.started_at, r.cpu_count));
        let mut last = live.cpu_sample.lock().unwrap_or_else(|e| e.into_inner());
        let (since, cpu_then) = last.unwrap_or_else(|| {
            let age = Duration::from_millis((clock::now_ms() - started_at).max(1) as u64);
            (now.checked_sub(age).unwrap_or(now), Duration::ZERO)
        });
        *last = Some((now, usage.cpu_time));
        let wall = now.duration_since(since).as_secs_f64() * f64::from(cpu_count.max(1));
        let used = usage.cpu_time.saturating_sub(cpu_then).as_secs_f64();
        let pct = if wall > 0.0 {
            (used / wall * 100.0).min(100.0)
        } else {
            0.0
        };
        Some((usage, (pct * 100.0).round() / 100.0))
    }
}
