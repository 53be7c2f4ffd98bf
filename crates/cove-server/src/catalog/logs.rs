//! Build logs: entries in the order they were written, read by offset as the SDKs poll.

use cove_db::params;
use cove_proto::templates::BuildLogEntry;

use super::{Catalog, Result};

/// The most entries one build keeps; later ones are dropped (a note says so).
pub const MAX_ENTRIES: u64 = 20_000;

/// The rank of a log level (`debug` lowest).
pub fn level_rank(level: &str) -> u8 {
    match level {
        "debug" => 0,
        "info" => 1,
        "warn" => 2,
        _ => 3,
    }
}

impl Catalog {
    /// Appends `entries` to `build`'s log (numbered on from `next`); returns the next number.
    pub fn append_logs(&self, build: &str, next: u64, entries: &[BuildLogEntry]) -> Result<u64> {
        let lines = entries
            .iter()
            .map(serde_json::to_string)
            .collect::<serde_json::Result<Vec<_>>>()?;
        Ok(self.db.transaction(|sql| {
            let mut seq = next;
            for line in lines {
                sql.execute(
                    "INSERT INTO template_build_logs (build, seq, entry) VALUES (?1, ?2, ?3)
                     ON CONFLICT (build, seq) DO UPDATE SET entry = excluded.entry",
                    params![build, seq, line],
                )?;
                seq += 1;
            }
            Ok(seq)
        })?)
    }

    /// Entries of `build`'s log from number `offset` on, at most `limit`, of at least level
    /// `min_level`: a filtered read skips what it filters (offsets count every entry).
    pub fn read_logs(
        &self,
        build: &str,
        offset: u64,
        limit: usize,
        min_level: Option<&str>,
    ) -> Result<Vec<BuildLogEntry>> {
        let raw = self
            .db
            .query(
                "SELECT entry FROM template_build_logs WHERE build = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
                params![build, offset, limit as u64],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<cove_db::Result<Vec<_>>>()?;
        let min = min_level.map(level_rank).unwrap_or(0);
        let mut entries = Vec::with_capacity(raw.len());
        for json in raw {
            let entry: BuildLogEntry = serde_json::from_str(&json)?;
            if level_rank(&entry.level) >= min {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// How many entries `build`'s log has.
    pub fn log_len(&self, build: &str) -> Result<u64> {
        Ok(self
            .db
            .query_row(
                "SELECT COUNT(*) FROM template_build_logs WHERE build = ?1",
                params![build],
            )?
            .map_or(Ok(0), |r| r.count(0))?)
    }
}
