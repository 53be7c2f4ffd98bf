//! Tags: names of a template's builds (`name:tag`).

use rusqlite::{OptionalExtension, params};

use super::{BuildRow, Catalog, Result};

/// One tag of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRow {
    pub tag: String,
    pub build: String,
    pub created_at: i64,
}

/// The build `tag` of `template` names now, if it exists.
fn tag_target(conn: &rusqlite::Connection, template: &str, tag: &str) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT build FROM template_tags WHERE template = ?1 AND tag = ?2",
            params![template, tag],
            |r| r.get(0),
        )
        .optional()?)
}

impl Catalog {
    /// Points `tag` of `template` at `build`; returns the build it named before, if another.
    pub fn assign_tag(&self, template: &str, tag: &str, build: &str) -> Result<Option<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let before = tag_target(&tx, template, tag)?;
        tx.execute(
            "INSERT OR REPLACE INTO template_tags (template, tag, build, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![template, tag, build, crate::clock::now_ms()],
        )?;
        tx.commit()?;
        Ok(before.filter(|b| b != build))
    }

    /// Removes `tag` of `template`; returns the build it named, if it existed.
    pub fn remove_tag(&self, template: &str, tag: &str) -> Result<Option<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let before = tag_target(&tx, template, tag)?;
        tx.execute(
            "DELETE FROM template_tags WHERE template = ?1 AND tag = ?2",
            params![template, tag],
        )?;
        tx.commit()?;
        Ok(before)
    }

    /// The tags of `template`, by name.
    pub fn tags_of(&self, template: &str) -> Result<Vec<TagRow>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT tag, build, created_at FROM template_tags WHERE template = ?1 ORDER BY tag",
        )?;
        let tags = statement
            .query_map(params![template], |r| {
                Ok(TagRow {
                    tag: r.get(0)?,
                    build: r.get(1)?,
                    created_at: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(tags)
    }

    /// How many tags name `build`.
    pub fn tag_count(&self, build: &str) -> Result<usize> {
        let count: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM template_tags WHERE build = ?1",
            params![build],
            |r| r.get(0),
        )?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// The build `tag` of `template` names.
    pub fn tagged_build(&self, template: &str, tag: &str) -> Result<Option<BuildRow>> {
        let build = tag_target(&self.conn(), template, tag)?;
        match build {
            Some(build) => self.build(template, &build),
            None => Ok(None),
        }
    }
}
