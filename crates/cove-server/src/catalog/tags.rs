//! Tags: names of a template's builds (`name:tag`).

use cove_db::{Sql, params};

use super::{BuildRow, Catalog, Result};

/// One tag of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRow {
    pub tag: String,
    pub build: String,
    pub created_at: i64,
}

/// The build `tag` of `template` names now, if it exists.
fn tag_target(sql: &mut dyn Sql, template: &str, tag: &str) -> cove_db::Result<Option<String>> {
    sql.query_row(
        "SELECT build FROM template_tags WHERE template = ?1 AND tag = ?2",
        params![template, tag],
    )?
    .map(|r| r.text(0))
    .transpose()
}

impl Catalog {
    /// Points `tag` of `template` at `build`; returns the build it named before, if another.
    pub fn assign_tag(&self, template: &str, tag: &str, build: &str) -> Result<Option<String>> {
        let before = self.db.transaction(|sql| {
            let before = tag_target(sql, template, tag)?;
            sql.execute(
                "INSERT INTO template_tags (template, tag, build, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (template, tag) DO UPDATE SET build = excluded.build, created_at = excluded.created_at",
                params![template, tag, build, crate::clock::now_ms()],
            )?;
            Ok(before)
        })?;
        Ok(before.filter(|b| b != build))
    }

    /// Removes `tag` of `template`; returns the build it named, if it existed.
    pub fn remove_tag(&self, template: &str, tag: &str) -> Result<Option<String>> {
        Ok(self.db.transaction(|sql| {
            let before = tag_target(sql, template, tag)?;
            sql.execute(
                "DELETE FROM template_tags WHERE template = ?1 AND tag = ?2",
                params![template, tag],
            )?;
            Ok(before)
        })?)
    }

    /// The tags of `template`, by name.
    pub fn tags_of(&self, template: &str) -> Result<Vec<TagRow>> {
        Ok(self
            .db
            .query(
                "SELECT tag, build, created_at FROM template_tags WHERE template = ?1 ORDER BY tag",
                params![template],
            )?
            .iter()
            .map(|r| {
                Ok(TagRow {
                    tag: r.text(0)?,
                    build: r.text(1)?,
                    created_at: r.int(2)?,
                })
            })
            .collect::<cove_db::Result<_>>()?)
    }

    /// How many tags name `build`.
    pub fn tag_count(&self, build: &str) -> Result<usize> {
        let count = self
            .db
            .query_row(
                "SELECT COUNT(*) FROM template_tags WHERE build = ?1",
                params![build],
            )?
            .map_or(Ok(0), |r| r.count(0))?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// The build `tag` of `template` names.
    pub fn tagged_build(&self, template: &str, tag: &str) -> Result<Option<BuildRow>> {
        let build = self.db.with(|sql| tag_target(sql, template, tag))?;
        match build {
            Some(build) => self.build(template, &build),
            None => Ok(None),
        }
    }
}
