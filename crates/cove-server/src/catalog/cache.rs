//! The build cache (which layer a step made, by its key) and the build contexts teams
//! uploaded (by their files hash).

use rusqlite::{OptionalExtension, params};

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
        let found: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT layer FROM template_step_cache WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?;
        Ok(match found {
            None => Cached::Unknown,
            Some(None) => Cached::NoLayer,
            Some(Some(layer)) => Cached::Layer(layer),
        })
    }

    /// Records what the step with cache key `key` made (`None`: it changed nothing).
    pub fn cache_step(&self, key: &str, layer: Option<&str>) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO template_step_cache (key, layer, created_at) VALUES (?1, ?2, ?3)",
            params![key, layer, crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Forgets every cached step whose layer is not in `kept` (after a collection).
    pub fn forget_cached_layers(&self, kept: &dyn Fn(&str) -> bool) -> Result<usize> {
        let layers: Vec<String> = {
            let conn = self.conn();
            let mut statement = conn.prepare(
                "SELECT DISTINCT layer FROM template_step_cache WHERE layer IS NOT NULL",
            )?;
            statement
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        let mut forgotten = 0;
        for layer in layers.iter().filter(|l| !kept(l)) {
            forgotten += self.conn().execute(
                "DELETE FROM template_step_cache WHERE layer = ?1",
                params![layer],
            )?;
        }
        Ok(forgotten)
    }

    /// Records that `team` uploaded the build context `hash`.
    pub fn note_upload(&self, team: &str, hash: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO template_files (team, hash, created_at) VALUES (?1, ?2, ?3)",
            params![team, hash, crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Whether `team` uploaded the build context `hash`.
    pub fn has_upload(&self, team: &str, hash: &str) -> Result<bool> {
        let count: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM template_files WHERE team = ?1 AND hash = ?2",
            params![team, hash],
            |r| r.get(0),
        )?;
        Ok(count > 0)
    }

    /// Forgets uploads made before `before`; returns them (team, hash).
    pub fn forget_uploads(&self, before: i64) -> Result<Vec<(String, String)>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old = {
            let mut statement =
                tx.prepare("SELECT team, hash FROM template_files WHERE created_at < ?1")?;
            statement
                .query_map(params![before], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.execute(
            "DELETE FROM template_files WHERE created_at < ?1",
            params![before],
        )?;
        tx.commit()?;
        Ok(old)
    }
}
