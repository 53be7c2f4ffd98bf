//! Whether a create may go ahead: the server's maximum of sandboxes, its team's limits on
//! sandboxes, memory and CPUs, and a turn to start (a start is a burst of kernel work; a
//! few at a time finish sooner than all at once, and the rest wait their turn in order).
//! Sandboxes admitted but not yet running count against every limit, so a burst of creates
//! cannot overshoot one.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::LifecycleError;
use crate::store::{SandboxRecord, TeamLimits};

/// Limits on creates.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Sandboxes this server runs at most (warm ones aside).
    pub max_sandboxes: usize,
    /// Sandboxes started at once; more wait for a turn.
    pub max_starting: usize,
    /// Creates that may wait for a turn; more are refused as busy.
    pub max_waiting: usize,
    /// How long a create waits for its turn before it is refused as busy.
    pub max_wait: Duration,
}

impl AdmissionConfig {
    /// Turns for twice as many starts as the host has CPUs (at least four): a start spends
    /// much of its time waiting on the kernel, not computing.
    pub fn for_this_host(max_sandboxes: usize) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            max_sandboxes,
            max_starting: (2 * cpus).max(4),
            max_waiting: 1024,
            max_wait: Duration::from_secs(120),
        }
    }
}

/// A sandbox admitted and not yet running.
#[derive(Debug)]
struct Pending {
    ticket: u64,
    team: String,
    memory_mb: u64,
    cpus: u32,
}

#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    turns: Arc<Semaphore>,
    waiting: AtomicUsize,
    pending: Mutex<Vec<Pending>>,
    next_ticket: AtomicU64,
}

/// A place among the admitted; given back when dropped (the sandbox runs, and is counted
/// among the running, or it never will).
#[derive(Debug)]
pub struct Ticket<'a> {
    admission: &'a Admission,
    ticket: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.admission
            .pending()
            .retain(|pending| pending.ticket != self.ticket);
    }
}

/// What is asked for.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub team: &'a str,
    pub memory_mb: u64,
    pub cpus: u32,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(config.max_starting.max(1))),
            config,
            waiting: AtomicUsize::new(0),
            pending: Mutex::default(),
            next_ticket: AtomicU64::new(0),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits `ask` when it fits, given the server's `running` count and the team's
    /// `team_running` sandboxes and `limits`.
    pub fn admit(
        &self,
        ask: Ask<'_>,
        running: usize,
        team_running: &[SandboxRecord],
        limits: TeamLimits,
    ) -> Result<Ticket<'_>, LifecycleError> {
        let mut pending = self.pending();
        if running + pending.len() >= self.config.max_sandboxes {
            return Err(LifecycleError::TooMany(self.config.max_sandboxes));
        }
        let theirs = pending.iter().filter(|p| p.team == ask.team);
        let (mut count, mut memory, mut cpus) = (0usize, 0u64, 0u64);
        for (m, c) in team_running
            .iter()
            .map(|r| (r.memory_mb, r.cpu_count))
            .chain(theirs.map(|p| (p.memory_mb, p.cpus)))
        {
            count += 1;
            memory += m;
            cpus += u64::from(c);
        }
        let over = |what: String| Err(LifecycleError::TeamLimit(what));
        if let Some(max) = limits.max_sandboxes
            && count + 1 > max as usize
        {
            return over(format!(
                "team {} has reached its limit of {max} sandboxes; kill some first",
                ask.team
            ));
        }
        if let Some(max) = limits.max_memory_mb
            && memory + ask.memory_mb > max
        {
            return over(format!(
                "team {} may use {max} MiB of memory in all; its sandboxes use {memory} MiB and this one asks for {} MiB",
                ask.team, ask.memory_mb
            ));
        }
        if let Some(max) = limits.max_cpus
            && cpus + u64::from(ask.cpus) > u64::from(max)
        {
            return over(format!(
                "team {} may use {max} CPUs in all; its sandboxes use {cpus} and this one asks for {}",
                ask.team, ask.cpus
            ));
        }
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        pending.push(Pending {
            ticket,
            team: ask.team.to_owned(),
            memory_mb: ask.memory_mb,
            cpus: ask.cpus,
        });
        Ok(Ticket {
            admission: self,
            ticket,
        })
    }

    /// Waits for a turn to start a sandbox (held until the start is done).
    pub async fn turn(&self) -> Result<OwnedSemaphorePermit, LifecycleError> {
        if let Ok(permit) = self.turns.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(LifecycleError::Busy);
        }
        let permit =
            tokio::time::timeout(self.config.max_wait, self.turns.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match permit {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out, or the semaphore closed (never done): busy either way.
            _ => Err(LifecycleError::Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_sandboxes: usize) -> AdmissionConfig {
        AdmissionConfig {
            max_sandboxes,
            max_starting: 1,
            max_waiting: 1,
            max_wait: Duration::from_millis(50),
        }
    }

    fn ask(team: &str) -> Ask<'_> {
        Ask {
            team,
            memory_mb: 512,
            cpus: 1,
        }
    }

    #[test]
    fn admitted_creates_count_until_they_run() {
        let admission = Admission::new(config(2));
        let first = admission.admit(ask("a"), 0, &[], TeamLimits::default());
        let second = admission.admit(ask("b"), 0, &[], TeamLimits::default());
        assert!(first.is_ok() && second.is_ok());
        assert!(matches!(
            admission.admit(ask("c"), 0, &[], TeamLimits::default()),
            Err(LifecycleError::TooMany(2))
        ));
        drop(first);
        assert!(
            admission
                .admit(ask("c"), 0, &[], TeamLimits::default())
                .is_ok()
        );
    }

    #[test]
    fn team_limits_add_up_what_runs_and_what_is_admitted() {
        let admission = Admission::new(config(100));
        let limits = TeamLimits {
            max_sandboxes: Some(3),
            max_memory_mb: Some(1024),
            max_cpus: Some(2),
        };
        let _one = admission.admit(ask("a"), 0, &[], limits).unwrap();
        let err = admission.admit(
            Ask {
                memory_mb: 1024,
                ..ask("a")
            },
            0,
            &[],
            limits,
        );
        assert!(
            matches!(&err, Err(LifecycleError::TeamLimit(m)) if m.contains("1024 MiB")),
            "{err:?}"
        );
        let _two = admission.admit(ask("a"), 0, &[], limits).unwrap();
        // Memory left for it, but no CPU.
        let err = admission.admit(
            Ask {
                memory_mb: 0,
                ..ask("a")
            },
            0,
            &[],
            limits,
        );
        assert!(
            matches!(&err, Err(LifecycleError::TeamLimit(m)) if m.contains("CPUs")),
            "{err:?}"
        );
        // Another team is not held back.
        assert!(admission.admit(ask("b"), 0, &[], limits).is_ok());
    }

    #[tokio::test]
    async fn creates_past_the_waiting_room_are_busy() {
        let admission = Admission::new(config(10));
        let held = admission.turn().await.unwrap();
        // One may wait (and times out), a second at the same time is refused at once.
        let (waited, refused) = tokio::join!(admission.turn(), async {
            tokio::task::yield_now().await;
            admission.turn().await
        });
        assert!(matches!(waited, Err(LifecycleError::Busy)));
        assert!(matches!(refused, Err(LifecycleError::Busy)));
        drop(held);
        assert!(admission.turn().await.is_ok());
    }
}
