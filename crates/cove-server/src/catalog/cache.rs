//! The build cache (which layer a step made, by its key) and the build contexts teams
//! uploaded (by their files hash).

use cove_db::params;

use super::{Catalog, Result};

/// What the cache knows of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    /// Never built (or forgotten).
    Unknown,
    /// Built, and it changed no file.
    NoLayer,
    /// Built into this layer.
    Layer(String),
}

impl Catalog {
    /// What the step with cache key `key` made.
    pub fn cached_step(&self, key: &str) -> Result<Cached> {
        let found = self
            .db
            .query_row(
                "SELECT layer FROM template_step_cache WHERE key = ?1",
                params![key],
            )?
            .map(|r| r.opt_text(0))
            .transpose()?;
        Ok(match found {
            None => Cached::Unknown,
            Some(None) => Cached::NoLayer,
            Some(Some(layer)) => Cached::Layer(layer),
        })
    }

    /// Records what the step with cache key `key` made (`None`: it changed nothing).
    pub fn cache_step(&self, key: &str, layer: Option<&str>) -> Result<()> {
        self.db.execute(
            "INSERT INTO template_step_cache (key, layer, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET layer = excluded.layer, created_at = excluded.created_at",
            params![key, layer, crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Forgets every cached step whose layer is not in `kept` (after a collection).
    pub fn forget_cached_layers(&self, kept: &dyn Fn(&str) -> bool) -> Result<usize> {
        let layers = self
            .db
            .query(
                "SELECT DISTINCT layer FROM template_step_cache WHERE layer IS NOT NULL",
                &[],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<cove_db::Result<Vec<_>>>()?;
        let mut forgotten = 0;
        for layer in layers.iter().filter(|l| !kept(l)) {
            forgotten += self.db.execute(
                "DELETE FROM template_step_cache WHERE layer = ?1",
                params![layer],
            )?;
        }
        Ok(usize::try_from(forgotten).unwrap_or(usize::MAX))
    }

    /// Records that `team` uploaded the build context `hash`.
    pub fn note_upload(&self, team: &str, hash: &str) -> Result<()> {
        self.db.execute(
            "INSERT INTO template_files (team, hash, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (team, hash) DO UPDATE SET created_at = excluded.created_at",
            params![team, hash, crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Whether `team` uploaded the build context `hash`.
    pub fn has_upload(&self, team: &str, hash: &str) -> Result<bool> {
        let count = self
            .db
            .query_row(
                "SELECT COUNT(*) FROM template_files WHERE team = ?1 AND hash = ?2",
                params![team, hash],
            )?
            .map_or(Ok(0), |r| r.count(0))?;
        Ok(count > 0)
    }

    /// Forgets uploads made before `before`; returns them (team, hash).
    pub fn forget_uploads(&self, before: i64) -> Result<Vec<(String, String)>> {
        Ok(self.db.transaction(|sql| {
            let old = sql
                .query(
                    "SELECT team, hash FROM template_files WHERE created_at < ?1",
                    params![before],
                )?
                .iter()
                .map(|r| Ok((r.text(0)?, r.text(1)?)))
                .collect::<cove_db::Result<Vec<_>>>()?;
            sql.execute(
                "DELETE FROM template_files WHERE created_at < ?1",
                params![before],
            )?;
            Ok(old)
        })?)
    }
}
