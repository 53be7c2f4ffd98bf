//! A running sandbox's lifetime: set, or extended by a connect.

use std::sync::Arc;

use super::{Lifecycle, LifecycleError, Live, settings::check_timeout};
use crate::clock;

impl Lifecycle {
    /// Sets the sandbox to end `timeout` seconds from now (shorter or longer).
    pub fn set_timeout(&self, team: &str, id: &str, timeout: i64) -> Result<(), LifecycleError> {
        check_timeout(timeout)?;
        let live = self.get(team, id)?;
        self.update(&live, |r| r.end_at = clock::now_ms() + timeout * 1000)
    }

    /// Connecting to a running sandbox extends its life to `timeout` from now, never shortens.
    pub fn connect(
        &self,
        team: &str,
        id: &str,
        timeout: Option<i64>,
    ) -> Result<Arc<Live>, LifecycleError> {
        let timeout = timeout.unwrap_or(300);
        check_timeout(timeout)?;
        let live = self.get(team, id)?;
        let end = clock::now_ms() + timeout * 1000;
        self.update(&live, |r| r.end_at = r.end_at.max(end))?;
        Ok(live)
    }
}
