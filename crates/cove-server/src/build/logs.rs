//! A build's log as it is written: entries stored at once (clients poll them by offset), the
//! step each belongs to, download progress at a bounded rate, and the latest lines of each
//! step kept at hand for the reason a failed build gives.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cove_proto::templates::{BuildLogEntry, Progress};

use crate::catalog::{Catalog, MAX_LOG_ENTRIES as MAX_ENTRIES};

/// Lines of a step kept for the reason of a failure.
const TAIL: usize = 20;
/// Progress of one download is logged at most this often.
const PROGRESS_PERIOD: Duration = Duration::from_millis(500);

/// The level of a log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct BuildLog {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Arc<Catalog>,
    build: String,
    state: Mutex<State>,
}

struct State {
    next: u64,
    dropped: bool,
    tails: HashMap<String, VecDeque<BuildLogEntry>>,
    /// When each download last logged its progress.
    progress_at: HashMap<String, Instant>,
}

impl std::fmt::Debug for BuildLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildLog")
            .field("build", &self.inner.build)
            .finish_non_exhaustive()
    }
}

impl BuildLog {
    /// The log of `build`, appended to after what it holds.
    pub fn open(catalog: Arc<Catalog>, build: &str) -> Self {
        let next = catalog.log_len(build).unwrap_or(0);
        Self {
            inner: Arc::new(Inner {
                catalog,
                build: build.to_owned(),
                state: Mutex::new(State {
                    next,
                    dropped: false,
                    tails: HashMap::new(),
                    progress_at: HashMap::new(),
                }),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs `message` for `step`.
    pub fn line(&self, level: Level, step: &str, message: impl Into<String>) {
        self.append(BuildLogEntry {
            timestamp: crate::clock::rfc3339(crate::clock::now_ms()),
            level: level.as_str().to_owned(),
            message: message.into(),
            step: Some(step.to_owned()),
            progress: None,
        });
    }

    pub fn info(&self, step: &str, message: impl Into<String>) {
        self.line(Level::Info, step, message);
    }

    /// Logs how far the download `key` is, unless it did so a moment ago (the last one,
    /// `done == total`, is always logged).
    pub fn progress(&self, step: &str, key: &str, message: String, done: u64, total: u64) {
        {
            let mut state = self.state();
            let now = Instant::now();
            let recent = state
                .progress_at
                .get(key)
                .is_some_and(|at| now.duration_since(*at) < PROGRESS_PERIOD);
            if recent && done < total {
                return;
            }
            state.progress_at.insert(key.to_owned(), now);
        }
        self.append(BuildLogEntry {
            timestamp: crate::clock::rfc3339(crate::clock::now_ms()),
            level: Level::Info.as_str().to_owned(),
            message,
            step: Some(step.to_owned()),
            progress: Some(Progress { done, total }),
        });
    }

    /// The latest lines of `step`, oldest first.
    pub fn tail(&self, step: &str) -> Vec<BuildLogEntry> {
        self.state()
            .tails
            .get(step)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn append(&self, entry: BuildLogEntry) {
        let mut state = self.state();
        if let Some(step) = &entry.step {
            let tail = state.tails.entry(step.clone()).or_default();
            if tail.len() == TAIL {
                tail.pop_front();
            }
            tail.push_back(entry.clone());
        }
        let mut entries = vec![entry];
        if state.next >= MAX_ENTRIES {
            if state.dropped || entries[0].level != "error" {
                return;
            }
        } else if state.next + 1 == MAX_ENTRIES {
            state.dropped = true;
            entries.insert(
                0,
                BuildLogEntry {
                    timestamp: entries[0].timestamp.clone(),
                    level: "warn".to_owned(),
                    message: format!(
                        "the build log is full ({MAX_ENTRIES} entries): later lines are left out"
                    ),
                    step: entries[0].step.clone(),
                    progress: None,
                },
            );
        }
        match self
            .inner
            .catalog
            .append_logs(&self.inner.build, state.next, &entries)
        {
            Ok(next) => state.next = next,
            Err(err) => {
                tracing::warn!(?err, build_id = %self.inner.build, "cannot store a build log line")
            }
        }
    }
}
