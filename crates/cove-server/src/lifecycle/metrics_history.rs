//! Each sandbox's resource use over time (`GET /sandboxes/{id}/metrics?start=&end=`): a
//! bounded ring of samples kept with the sandbox (and gone with it), taken every
//! [`SAMPLE_PERIOD`] while it runs and whenever a client asks. CPU and memory come from its
//! cgroup; disk use from its agent (what the sandbox itself sees), asked at most every
//! [`DISK_EVERY`] by the sampler.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::{Lifecycle, Live};
use crate::{agent_link, clock};

/// How often running sandboxes are sampled.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(5);
/// Samples kept per sandbox: an hour of them.
pub const KEPT: usize = 720;
/// How long the sampler reuses the disk use the agent last reported.
const DISK_EVERY: Duration = Duration::from_secs(60);
/// A client asking more often than this gets the last sample again.
const FRESH: Duration = Duration::from_secs(1);

/// One sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Unix milliseconds.
    pub at: i64,
    pub cpu_count: u32,
    pub cpu_used_pct: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// A sandbox's samples, oldest first, at most [`KEPT`].
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
    /// The agent's last report of disk use (used, total), and when.
    disk: Option<(u64, u64, Instant)>,
}

impl History {
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The samples taken from `start` to `end` (unix milliseconds, both included).
    pub fn between(&self, start: Option<i64>, end: Option<i64>) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| start.is_none_or(|t| s.at >= t) && end.is_none_or(|t| s.at <= t))
            .copied()
            .collect()
    }

    pub fn latest(&self) -> Option<Sample> {
        self.samples.back().copied()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// What the agent's `/metrics` reports.
#[derive(Debug, Deserialize)]
pub struct AgentMetrics {
    pub cpu_count: u32,
    pub cpu_used_pct: f64,
    pub mem_total: u64,
    pub mem_used: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// Asks a sandbox's agent for its resource use.
pub async fn agent_metrics(live: &Live) -> Result<AgentMetrics, agent_link::LinkError> {
    agent_link::get_json(live.links(), "/metrics", Some(&live.access_token())).await
}

impl Lifecycle {
    /// Samples a running sandbox now (its agent and its cgroup) and keeps the sample; a
    /// sample younger than a second is given again instead.
    pub async fn sample_now(&self, live: &Live) -> Result<Sample, agent_link::LinkError> {
        {
            let history = live.history.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = history.latest()
                && clock::now_ms() - last.at < FRESH.as_millis() as i64
            {
                return Ok(last);
            }
        }
        let agent = agent_metrics(live).await?;
        let (memory_mb, cpu_count) = live.read(|r| (r.memory_mb, r.cpu_count));
        let (mem_used, mem_cache, cpu_used_pct) = match self.usage(live).await {
            Some((usage, cpu_pct)) => (usage.memory_bytes, usage.cache_bytes, cpu_pct),
            None => (agent.mem_used, agent.mem_cache, agent.cpu_used_pct),
        };
        let sample = Sample {
            at: clock::now_ms(),
            cpu_count,
            cpu_used_pct,
            mem_used,
            mem_total: memory_mb << 20,
            mem_cache,
            disk_used: agent.disk_used,
            disk_total: agent.disk_total,
        };
        let mut history = live.history.lock().unwrap_or_else(|e| e.into_inner());
        history.disk = Some((agent.disk_used, agent.disk_total, Instant::now()));
        history.push(sample);
        Ok(sample)
    }

    /// Samples every running sandbox (the reaper calls it every [`SAMPLE_PERIOD`]).
    pub async fn sample_all(self: &Arc<Self>) {
        let mut running = self.registry.all();
        running.retain(|l| l.paused().is_none());
        for live in running {
            if live.read(|r| r.allow_internet_access) {
                self.count_egress_refusals(&live).await;
            }
            let stale = live
                .history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .disk
                .is_none_or(|(_, _, at)| at.elapsed() >= DISK_EVERY);
            if stale {
                // The agent's answer brings the disk use along.
                if let Err(err) = self.sample_now(&live).await {
                    self.metrics.agent_error(crate::telemetry::AgentOp::Metrics);
                    tracing::debug!(?err, sandbox_id = %live.id(), team = %live.team(), "cannot sample the sandbox");
                }
                continue;
            }
            let Some((usage, cpu_used_pct)) = self.usage(&live).await else {
                continue;
            };
            let (memory_mb, cpu_count) = live.read(|r| (r.memory_mb, r.cpu_count));
            let mut history = live.history.lock().unwrap_or_else(|e| e.into_inner());
            let (disk_used, disk_total, _) = history.disk.unwrap_or((0, 0, Instant::now()));
            history.push(Sample {
                at: clock::now_ms(),
                cpu_count,
                cpu_used_pct,
                mem_used: usage.memory_bytes,
                mem_total: memory_mb << 20,
                mem_cache: usage.cache_bytes,
                disk_used,
                disk_total,
            });
        }
    }

    /// The samples of `live` from `start` to `end` (unix milliseconds).
    pub fn history(&self, live: &Live, start: Option<i64>, end: Option<i64>) -> Vec<Sample> {
        live.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .between(start, end)
    }

    /// The newest sample of `live`, if it has one.
    pub fn latest_sample(&self, live: &Live) -> Option<Sample> {
        live.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Sample {
        Sample {
            at: ms,
            cpu_count: 1,
            cpu_used_pct: 0.0,
            mem_used: 0,
            mem_total: 0,
            mem_cache: 0,
            disk_used: 0,
            disk_total: 0,
        }
    }

    #[test]
    fn the_history_is_bounded_and_answers_time_ranges() {
        let mut history = History::default();
        for ms in 0..(KEPT as i64 + 10) {
            history.push(at(ms));
        }
        assert_eq!(history.len(), KEPT);
        assert_eq!(
            history.between(None, None)[0].at,
            10,
            "the oldest went first"
        );
        let range = history.between(Some(100), Some(109));
        assert_eq!(range.len(), 10);
        assert_eq!((range[0].at, range[9].at), (100, 109));
        assert!(history.between(Some(10_000), None).is_empty());
        assert_eq!(history.latest().unwrap().at, KEPT as i64 + 9);
    }
}
