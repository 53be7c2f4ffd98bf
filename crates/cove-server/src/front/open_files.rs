//! File descriptors: the server's own limit, raised at start, and a gauge that keeps a
//! reserve of them free by pausing accepts.

use std::time::{Duration, Instant};

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The hard limit a server running as root raises itself to (within `fs.nr_open`).
const ROOT_HARD_LIMIT: u64 = 1 << 20;

/// How old a count of open descriptors may get before it is taken again anyway.
const RECOUNT_PERIOD: Duration = Duration::from_secs(1);

/// The least time between two counts while the estimate is near the mark: a count reads
/// `/proc/self/fd`, a directory as large as the number of open descriptors.
const MIN_RECOUNT_GAP: Duration = Duration::from_millis(10);

/// Raises the server's RLIMIT_NOFILE: the soft limit to `wanted`, or else as high as the hard
/// limit goes, after raising the hard limit to 2^20 where that is allowed (as root, within
/// `/proc/sys/fs/nr_open`). Returns the soft limit in force.
pub fn raise_limit(wanted: Option<u64>) -> u64 {
    let before = getrlimit(Resource::Nofile);
    let old_soft = before.current.unwrap_or(u64::MAX);
    let mut hard = before.maximum.unwrap_or(u64::MAX);
    let goal = wanted.unwrap_or_else(|| ROOT_HARD_LIMIT.min(nr_open()));
    if goal > hard {
        let raised = Rlimit {
            current: before.current,
            maximum: Some(goal),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => hard = goal,
            // Without CAP_SYS_RESOURCE the hard limit is what we have.
            Err(err) => tracing::info!(?err, goal, "cannot raise the hard open-files limit"),
        }
    }
    let soft = goal.min(hard);
    if let Err(err) = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: Some(hard),
        },
    ) {
        tracing::warn!(?err, soft, "cannot set the open-files limit");
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if wanted.is_some_and(|w| w > now) {
        tracing::warn!(
            wanted = wanted.unwrap_or_default(),
            got = now,
            "the open-files limit is lower than asked for"
        );
    }
    tracing::info!(
        before_soft = old_soft,
        before_hard = before.maximum.unwrap_or(u64::MAX),
        soft = now,
        hard,
        "open-files limit"
    );
    now
}

/// The kernel's ceiling for a hard open-files limit.
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(ROOT_HARD_LIMIT)
}

/// How many descriptors the server has open, `None` when they cannot be listed (which, when
/// it is for lack of a descriptor, says enough).
pub fn open_count() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory's own descriptor is listed too.
    Some((entries.count() as u64).saturating_sub(1))
}

/// Whether another connection may take a descriptor: open descriptors stay below the limit
/// less the reserve. Counting is a directory read, so between counts the gauge adds the
/// connections taken since, and counts again when that estimate nears the mark.
#[derive(Debug)]
pub struct FdGauge {
    mark: u64,
    counted: u64,
    counted_at: Instant,
    taken_since: u64,
    count: fn() -> Option<u64>,
    min_gap: Duration,
}

impl FdGauge {
    /// A gauge that keeps `reserve` of `limit` descriptors free.
    pub fn new(limit: u64, reserve: u64) -> Self {
        Self::with_counter(limit, reserve, open_count, MIN_RECOUNT_GAP)
    }

    fn with_counter(
        limit: u64,
        reserve: u64,
        count: fn() -> Option<u64>,
        min_gap: Duration,
    ) -> Self {
        let mut gauge = Self {
            mark: limit.saturating_sub(reserve),
            counted: 0,
            counted_at: Instant::now(),
            taken_since: 0,
            count,
            min_gap,
        };
        gauge.recount();
        gauge
    }

    fn recount(&mut self) {
        // Unknown counts as full: the listing fails when no descriptor is left for it.
        self.counted = (self.count)().unwrap_or(u64::MAX);
        self.counted_at = Instant::now();
        self.taken_since = 0;
    }

    fn estimate(&self) -> u64 {
        self.counted.saturating_add(self.taken_since)
    }

    /// Whether one more descriptor may be taken for a connection.
    pub fn has_room(&mut self) -> bool {
        let age = self.counted_at.elapsed();
        let near = self.estimate().saturating_add(1) >= self.mark;
        if age >= RECOUNT_PERIOD || (near && age >= self.min_gap) {
            self.recount();
        }
        self.estimate().saturating_add(1) < self.mark
    }

    /// A connection took a descriptor (and kept it).
    pub fn taken(&mut self) {
        self.taken_since += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gauge_adds_taken_descriptors_to_its_count() {
        // Never recounting (the gap is too long): the estimate decides.
        let mut gauge = FdGauge::with_counter(100, 10, || Some(80), Duration::MAX);
        assert!(gauge.has_room());
        for _ in 0..8 {
            gauge.taken();
        }
        assert!(gauge.has_room());
        gauge.taken();
        assert!(!gauge.has_room());
    }

    #[test]
    fn near_the_mark_the_gauge_counts_again() {
        let mut gauge = FdGauge::with_counter(100, 10, || Some(80), Duration::ZERO);
        for _ in 0..20 {
            gauge.taken();
        }
        // The connections taken have closed again: the count says 80.
        assert!(gauge.has_room());
    }

    #[test]
    fn an_unknown_count_is_full() {
        let mut gauge = FdGauge::with_counter(100, 10, || None, Duration::ZERO);
        assert!(!gauge.has_room());
    }

    #[test]
    fn the_limit_can_be_set_lower_and_raised_again() {
        let before = getrlimit(Resource::Nofile);
        let hard = before.maximum.unwrap_or(u64::MAX);
        assert_eq!(raise_limit(Some(512.min(hard))), 512.min(hard));
        let raised = raise_limit(None);
        assert!(raised >= hard.min(ROOT_HARD_LIMIT.min(nr_open())));
        setrlimit(Resource::Nofile, before).unwrap();
    }
}
