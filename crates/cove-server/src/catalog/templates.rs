//! Templates and their names.

use rusqlite::{OptionalExtension, params};

use super::{Catalog, Result};

/// A template as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateRow {
    pub id: String,
    pub team: String,
    /// What its sandboxes get unless a create asks otherwise (E2B's build settings).
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub spawn_count: u64,
    pub last_spawned_at: Option<i64>,
    /// Its names (E2B's aliases), sorted.
    pub names: Vec<String>,
    /// The backend its sandboxes run on unless a create names one (none: the server's
    /// default).
    pub runtime: Option<String>,
}

/// Whose a name is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Nobody,
    Team(TemplateRow),
    /// Another team's template has it.
    OtherTeam,
}

const COLUMNS: &str =
    "id, team, cpu_count, memory_mb, created_at, updated_at, spawn_count, last_spawned_at, runtime";

impl Catalog {
    /// Creates a template of `team` named `name`.
    pub fn create_template(
        &self,
        id: &str,
        team: &str,
        name: &str,
        cpu_count: u32,
        memory_mb: u64,
        runtime: Option<&str>,
    ) -> Result<TemplateRow> {
        let now = crate::clock::now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO template_templates (id, team, cpu_count, memory_mb, created_at, updated_at, runtime) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
            params![id, team, cpu_count, memory_mb as i64, now, runtime],
        )?;
        tx.execute(
            "INSERT INTO template_names (name, template) VALUES (?1, ?2)",
            params![name, id],
        )?;
        tx.commit()?;
        Ok(TemplateRow {
            id: id.to_owned(),
            team: team.to_owned(),
            cpu_count,
            memory_mb,
            created_at: now,
            updated_at: now,
            spawn_count: 0,
            last_spawned_at: None,
            names: vec![name.to_owned()],
            runtime: runtime.map(str::to_owned),
        })
    }

    /// Changes the backend a template's sandboxes run on (a rebuild may name another).
    pub fn set_template_runtime(&self, id: &str, runtime: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE template_templates SET runtime = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, runtime, crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Changes the resources a template's sandboxes get (a rebuild may ask for others).
    pub fn set_template_resources(&self, id: &str, cpu_count: u32, memory_mb: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE template_templates SET cpu_count = ?2, memory_mb = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, cpu_count, memory_mb as i64, crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Who holds `name`, as `team` sees it.
    pub fn name_owner(&self, team: &str, name: &str) -> Result<Owner> {
        let id: Option<String> = self
            .conn()
            .query_row(
                "SELECT template FROM template_names WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else {
            return Ok(Owner::Nobody);
        };
        Ok(match self.template(&id)? {
            Some(row) if row.team == team => Owner::Team(row),
            Some(_) => Owner::OtherTeam,
            None => Owner::Nobody,
        })
    }

    /// The template `team` means by `id_or_name` (a tag after `:` is not part of it):
    /// `Ok(Owner::OtherTeam)` for one that exists but is another team's.
    pub fn find(&self, team: &str, id_or_name: &str) -> Result<Owner> {
        match self.name_owner(team, id_or_name)? {
            Owner::Nobody => {}
            found => return Ok(found),
        }
        Ok(match self.template(id_or_name)? {
            Some(row) if row.team == team => Owner::Team(row),
            Some(_) => Owner::OtherTeam,
            None => Owner::Nobody,
        })
    }

    /// A template by id.
    pub fn template(&self, id: &str) -> Result<Option<TemplateRow>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM template_templates WHERE id = ?1"),
                params![id],
                template_row,
            )
            .optional()?;
        let Some(mut row) = row else {
            return Ok(None);
        };
        row.names = names_of(&conn, id)?;
        Ok(Some(row))
    }

    /// Every template of `team`, oldest first.
    pub fn templates_of(&self, team: &str) -> Result<Vec<TemplateRow>> {
        self.templates_where("team = ?1 ORDER BY created_at, id", params![team])
    }

    /// Every template of every team.
    pub fn all_templates(&self) -> Result<Vec<TemplateRow>> {
        self.templates_where("1 ORDER BY created_at, id", params![])
    }

    fn templates_where(
        &self,
        condition: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<TemplateRow>> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM template_templates WHERE {condition}"
        ))?;
        let mut rows = statement
            .query_map(params, template_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for row in &mut rows {
            row.names = names_of(&conn, &row.id)?;
        }
        Ok(rows)
    }

    /// Counts a sandbox made from template `id`.
    pub fn note_spawn(&self, id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE template_templates SET spawn_count = spawn_count + 1, last_spawned_at = ?2 WHERE id = ?1",
            params![id, crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Deletes template `id` with its names, builds, tags and logs; returns the ids of the
    /// builds it had.
    pub fn delete_template(&self, id: &str) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let builds = {
            let mut statement = tx.prepare("SELECT id FROM template_builds WHERE template = ?1")?;
            statement
                .query_map(params![id], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        for build in &builds {
            tx.execute(
                "DELETE FROM template_build_logs WHERE build = ?1",
                params![build],
            )?;
        }
        tx.execute(
            "DELETE FROM template_builds WHERE template = ?1",
            params![id],
        )?;
        tx.execute("DELETE FROM template_tags WHERE template = ?1", params![id])?;
        tx.execute(
            "DELETE FROM template_names WHERE template = ?1",
            params![id],
        )?;
        tx.execute("DELETE FROM template_templates WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(builds)
    }
}

fn names_of(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Vec<String>> {
    let mut statement =
        conn.prepare_cached("SELECT name FROM template_names WHERE template = ?1 ORDER BY name")?;
    statement
        .query_map(params![id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()
}

fn template_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TemplateRow> {
    Ok(TemplateRow {
        id: row.get(0)?,
        team: row.get(1)?,
        cpu_count: row.get(2)?,
        memory_mb: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
        spawn_count: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
        last_spawned_at: row.get(7)?,
        names: Vec::new(),
        runtime: row.get(8)?,
    })
}
