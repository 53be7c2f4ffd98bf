//! A sandbox's lifetime: set (a connect extends it too, see [`super::pause`]).

use super::{Lifecycle, LifecycleError, settings::check_timeout};
use crate::clock;

impl Lifecycle {
    /// Sets the sandbox to end `timeout` seconds from now (shorter or longer).
    pub fn set_timeout(&self, team: &str, id: &str, timeout: i64) -> Result<(), LifecycleError> {
        check_timeout(timeout)?;
        let live = self.get(team, id)?;
        self.update(&live, |r| r.end_at = clock::now_ms() + timeout * 1000)
    }
}
