//! Templates and their names.

use cove_db::{Row, Value, params};

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
        self.db.transaction(|sql| {
            sql.execute(
                "INSERT INTO template_templates (id, team, cpu_count, memory_mb, created_at, updated_at, runtime) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
                params![id, team, cpu_count, memory_mb, now, runtime],
            )?;
            sql.execute(
                "INSERT INTO template_names (name, template) VALUES (?1, ?2)",
                params![name, id],
            )?;
            Ok(())
        })?;
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
        self.db.execute(
            "UPDATE template_templates SET runtime = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, runtime, crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Changes the resources a template's sandboxes get (a rebuild may ask for others).
    pub fn set_template_resources(&self, id: &str, cpu_count: u32, memory_mb: u64) -> Result<()> {
        self.db.execute(
            "UPDATE template_templates SET cpu_count = ?2, memory_mb = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, cpu_count, memory_mb, crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Who holds `name`, as `team` sees it.
    pub fn name_owner(&self, team: &str, name: &str) -> Result<Owner> {
        let id = self
            .db
            .query_row(
                "SELECT template FROM template_names WHERE name = ?1",
                params![name],
            )?
            .map(|r| r.text(0))
            .transpose()?;
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
        Ok(self
            .templates_where("id = ?1", params![id])?
            .into_iter()
            .next())
    }

    /// Every template of `team`, oldest first.
    pub fn templates_of(&self, team: &str) -> Result<Vec<TemplateRow>> {
        self.templates_where("team = ?1", params![team])
    }

    /// Every template of every team.
    pub fn all_templates(&self) -> Result<Vec<TemplateRow>> {
        self.templates_where("1 = 1", &[])
    }

    /// The templates `condition` selects, oldest first, with their names.
    fn templates_where(&self, condition: &str, params: &[Value]) -> Result<Vec<TemplateRow>> {
        Ok(self.db.with(|sql| {
            let rows = sql.query(
                &format!(
                    "SELECT {COLUMNS} FROM template_templates WHERE {condition} ORDER BY created_at, id"
                ),
                params,
            )?;
            let mut templates = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut template = template_row(row)?;
                template.names = sql
                    .query(
                        "SELECT name FROM template_names WHERE template = ?1 ORDER BY name",
                        params![&template.id],
                    )?
                    .iter()
                    .map(|r| r.text(0))
                    .collect::<cove_db::Result<_>>()?;
                templates.push(template);
            }
            Ok(templates)
        })?)
    }

    /// Counts a sandbox made from template `id`.
    pub fn note_spawn(&self, id: &str) -> Result<()> {
        self.db.execute(
            "UPDATE template_templates SET spawn_count = spawn_count + 1, last_spawned_at = ?2 WHERE id = ?1",
            params![id, crate::clock::now_ms()],
        )?;
        Ok(())
    }

    /// Deletes template `id` with its names, builds, tags and logs; returns the ids of the
    /// builds it had.
    pub fn delete_template(&self, id: &str) -> Result<Vec<String>> {
        Ok(self.db.transaction(|sql| {
            let builds = sql
                .query(
                    "SELECT id FROM template_builds WHERE template = ?1",
                    params![id],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<cove_db::Result<Vec<_>>>()?;
            sql.execute(
                "DELETE FROM template_build_logs WHERE build IN (SELECT id FROM template_builds WHERE template = ?1)",
                params![id],
            )?;
            for table in ["template_builds", "template_tags", "template_names"] {
                sql.execute(
                    &format!("DELETE FROM {table} WHERE template = ?1"),
                    params![id],
                )?;
            }
            sql.execute("DELETE FROM template_templates WHERE id = ?1", params![id])?;
            Ok(builds)
        })?)
    }
}

fn template_row(row: &Row) -> cove_db::Result<TemplateRow> {
    Ok(TemplateRow {
        id: row.text(0)?,
        team: row.text(1)?,
        cpu_count: row.opt_u32(2)?.unwrap_or(0),
        memory_mb: row.count(3)?,
        created_at: row.int(4)?,
        updated_at: row.int(5)?,
        spawn_count: row.count(6)?,
        last_spawned_at: row.opt_int(7)?,
        names: Vec::new(),
        runtime: row.opt_text(8)?,
    })
}
