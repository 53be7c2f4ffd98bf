//! The server's state in an embedded SQLite file: API keys (hashed), sandboxes (so a
//! restarted server finds its running and paused sandboxes again) and the templates made
//! of snapshots.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Mutex,
};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::secrets;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    team        TEXT NOT NULL,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE TABLE IF NOT EXISTS teams (
    name           TEXT PRIMARY KEY,
    max_sandboxes  INTEGER,
    max_memory_mb  INTEGER,
    max_cpus       INTEGER
);
CREATE TABLE IF NOT EXISTS sandboxes (
    id          TEXT PRIMARY KEY,
    team        TEXT NOT NULL,
    record      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS volumes (
    id          TEXT PRIMARY KEY,
    team        TEXT NOT NULL,
    name        TEXT NOT NULL,
    record      TEXT NOT NULL,
    UNIQUE (team, name)
);
CREATE TABLE IF NOT EXISTS templates (
    id          TEXT PRIMARY KEY,
    team        TEXT NOT NULL,
    entry       TEXT NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("a stored sandbox record is unreadable")]
    Record(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// Whether a row like this one exists already (a unique column repeated).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::Query(rusqlite::Error::SqliteFailure(err, _))
                if err.code == rusqlite::ErrorCode::ConstraintViolation
        )
    }

    /// Whether the database could not be written because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Query(rusqlite::Error::SqliteFailure(err, _))
                if err.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// An API key as listed (never the secret itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub team: String,
    pub name: String,
    /// The first characters of the secret, to recognise it.
    pub prefix: String,
    pub created_at: i64,
    pub revoked: bool,
}

/// What a team's sandboxes may use together at once; `None` is no limit of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TeamLimits {
    pub max_sandboxes: Option<u32>,
    pub max_memory_mb: Option<u64>,
    pub max_cpus: Option<u32>,
}

/// Everything the server remembers about a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub id: String,
    pub team: String,
    pub template_id: String,
    pub alias: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub envd_access_token: String,
    /// Required from clients of the sandbox's ports when it is not public.
    #[serde(default)]
    pub traffic_access_token: Option<String>,
    /// Unix milliseconds.
    pub started_at: i64,
    pub end_at: i64,
    pub cpu_count: u32,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub allow_internet_access: bool,
    /// What the runtime needs to find the sandbox again (none while it is being created).
    #[serde(default)]
    pub handle: Option<cove_runtime::Handle>,
    /// Set while it is paused: what the pause kept.
    #[serde(default)]
    pub paused: Option<cove_runtime::PauseMode>,
    /// What happens when its time is up, and to traffic while it is paused.
    #[serde(default)]
    pub lifecycle: LifecyclePolicy,
    /// The layers it was made from: a sandbox keeps them (it may start again from them after
    /// a pause) when its template is deleted.
    #[serde(default)]
    pub template: Option<cove_runtime::Template>,
    /// What its template sets for its processes; none: E2B's defaults (`user`, `/home/user`).
    #[serde(default)]
    pub defaults: Option<SandboxDefaults>,
    /// Volumes mounted into it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<MountedVolume>,
    /// Its own egress rules (`allowOut`, `denyOut`), as the client wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressRules>,
    /// The `Host` requests to its ports carry instead of the one clients sent (E2B's
    /// `maskRequestHost`; `${PORT}` stands for the port), checked when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_request_host: Option<String>,
}

/// A sandbox's `allowOut`, `denyOut` and `dnsServers`, as its record keeps them (checked when
/// set).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRules {
    #[serde(default)]
    pub allow_out: Vec<String>,
    #[serde(default)]
    pub deny_out: Vec<String>,
    /// Name servers opened (all traffic) while `allowOut` or `denyOut` has a domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_servers: Vec<String>,
    /// E2B's `rules`: headers set in requests to a domain's names, by domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, BTreeMap<String, String>>,
}

/// A volume mounted into a sandbox, as its record keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountedVolume {
    pub volume_id: String,
    pub name: String,
    /// Where the sandbox sees it.
    pub path: String,
}

/// A team's volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    pub team: String,
    pub name: String,
    /// What the content API asks for (`Authorization: Bearer`).
    pub token: String,
    /// Its quota.
    pub size_mb: u64,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// What a sandbox asked for at create about its lifecycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecyclePolicy {
    /// Paused (keeping this) instead of killed when its time is up.
    #[serde(default)]
    pub auto_pause: Option<cove_runtime::PauseMode>,
    /// Traffic to its ports resumes it while it is paused.
    #[serde(default)]
    pub auto_resume: bool,
    /// The lifetime it was created with, in seconds (given again when traffic resumes it).
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: i64,
}

fn default_timeout_secs() -> i64 {
    300
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        Self {
            auto_pause: None,
            auto_resume: false,
            timeout_secs: default_timeout_secs(),
        }
    }
}

/// A template's settings for the processes of its sandboxes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxDefaults {
    pub user: String,
    pub workdir: String,
    pub env: BTreeMap<String, String>,
}

/// A connection to the state database at `path` as every user of it opens one (WAL, a busy
/// timeout for the other connections), with the tables of `schema` created.
pub(crate) fn connect(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

/// The state database.
pub struct Store {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = connect(path, SCHEMA).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether any key (revoked or not) was ever stored.
    pub fn has_keys(&self) -> Result<bool> {
        let count: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM api_keys", [], |r| r.get(0))?;
        Ok(count > 0)
    }

    /// Stores `secret` as a key of `team` (again a no-op when it is already there).
    pub fn add_key(&self, team: &str, name: &str, secret: &str) -> Result<KeyInfo> {
        let hash = secrets::hash_key(secret);
        let conn = self.conn();
        let existing = conn
            .query_row(
                "SELECT id, team, name, prefix, created_at, revoked_at IS NOT NULL FROM api_keys WHERE hash = ?1",
                params![hash],
                key_info,
            )
            .optional()?;
        if let Some(info) = existing {
            return Ok(info);
        }
        let info = KeyInfo {
            id: secrets::random_id(12),
            team: team.to_owned(),
            name: name.to_owned(),
            prefix: secret.chars().take(12).collect(),
            created_at: crate::clock::now_ms(),
            revoked: false,
        };
        conn.execute(
            "INSERT INTO api_keys (id, team, name, hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![info.id, info.team, info.name, hash, info.prefix, info.created_at],
        )?;
        Ok(info)
    }

    /// Creates a new random key for `team`; the secret is returned once and never stored.
    pub fn create_key(&self, team: &str, name: &str) -> Result<(KeyInfo, String)> {
        let secret = secrets::new_api_key();
        let info = self.add_key(team, name, &secret)?;
        Ok((info, secret))
    }

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT id, team, name, prefix, created_at, revoked_at IS NOT NULL FROM api_keys ORDER BY created_at",
        )?;
        let keys = statement
            .query_map([], key_info)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(keys)
    }

    /// Revokes a key by id; `false` when there is no such (unrevoked) key.
    pub fn revoke_key(&self, id: &str) -> Result<bool> {
        let changed = self.conn().execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, crate::clock::now_ms()],
        )?;
        Ok(changed > 0)
    }

    /// The team a (non-revoked) key belongs to.
    pub fn team_for_key(&self, secret: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT team FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL",
                params![secrets::hash_key(secret)],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Every valid (non-revoked) key's hash, with its team.
    pub fn valid_keys(&self) -> Result<HashMap<String, String>> {
        let conn = self.conn();
        let mut statement =
            conn.prepare("SELECT hash, team FROM api_keys WHERE revoked_at IS NULL")?;
        let keys = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<HashMap<_, _>>>()?;
        Ok(keys)
    }

    /// SQLite's `PRAGMA data_version`: changes when another connection commits.
    pub fn data_version(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// What `team` may use (no limits unless some were set).
    pub fn team_limits(&self, team: &str) -> Result<TeamLimits> {
        Ok(self
            .conn()
            .query_row(
                "SELECT max_sandboxes, max_memory_mb, max_cpus FROM teams WHERE name = ?1",
                params![team],
                team_limits,
            )
            .optional()?
            .unwrap_or_default())
    }

    /// Sets what `team` may use (replacing what was set before).
    pub fn set_team_limits(&self, team: &str, limits: TeamLimits) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO teams (name, max_sandboxes, max_memory_mb, max_cpus) VALUES (?1, ?2, ?3, ?4)",
            params![
                team,
                limits.max_sandboxes,
                limits.max_memory_mb.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
                limits.max_cpus
            ],
        )?;
        Ok(())
    }

    /// Every team that has keys or limits, with its limits, by name.
    pub fn teams(&self) -> Result<Vec<(String, TeamLimits)>> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT names.name, t.max_sandboxes, t.max_memory_mb, t.max_cpus
             FROM (SELECT team AS name FROM api_keys UNION SELECT name FROM teams) AS names
             LEFT JOIN teams AS t ON t.name = names.name ORDER BY names.name",
        )?;
        let teams = statement
            .query_map([], |row| Ok((row.get(0)?, team_limits_at(row, 1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(teams)
    }

    /// Inserts or replaces a sandbox's record.
    pub fn put_sandbox(&self, record: &SandboxRecord) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO sandboxes (id, team, record) VALUES (?1, ?2, ?3)",
            params![record.id, record.team, serde_json::to_string(record)?],
        )?;
        Ok(())
    }

    pub fn delete_sandbox(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Inserts or replaces a template of `team` (a snapshot), stored as JSON.
    pub fn put_template<T: Serialize>(&self, id: &str, team: &str, entry: &T) -> Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO templates (id, team, entry) VALUES (?1, ?2, ?3)",
            params![id, team, serde_json::to_string(entry)?],
        )?;
        Ok(())
    }

    pub fn delete_template(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM templates WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every stored template.
    pub fn templates<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut statement = conn.prepare("SELECT entry FROM templates")?;
        let raw = statement
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(raw
            .iter()
            .map(|json| serde_json::from_str(json))
            .collect::<serde_json::Result<Vec<_>>>()?)
    }

    /// Adds a volume; a conflict ([`StoreError::is_conflict`]) when its team has one of
    /// that name.
    pub fn insert_volume(&self, volume: &VolumeRecord) -> Result<()> {
        self.conn().execute(
            "INSERT INTO volumes (id, team, name, record) VALUES (?1, ?2, ?3, ?4)",
            params![
                volume.id,
                volume.team,
                volume.name,
                serde_json::to_string(volume)?
            ],
        )?;
        Ok(())
    }

    pub fn delete_volume(&self, id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM volumes WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every volume, oldest first.
    pub fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        self.records("SELECT record FROM volumes ORDER BY rowid")
    }

    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        self.records("SELECT record FROM sandboxes")
    }

    /// The JSON records `query` selects (one column), read back.
    fn records<T: serde::de::DeserializeOwned>(&self, query: &str) -> Result<Vec<T>> {
        let conn = self.conn();
        let mut statement = conn.prepare(query)?;
        let raw = statement
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(raw
            .iter()
            .map(|json| serde_json::from_str(json))
            .collect::<serde_json::Result<Vec<_>>>()?)
    }
}

fn team_limits(row: &rusqlite::Row<'_>) -> rusqlite::Result<TeamLimits> {
    team_limits_at(row, 0)
}

fn team_limits_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<TeamLimits> {
    Ok(TeamLimits {
        max_sandboxes: row.get(first)?,
        max_memory_mb: row
            .get::<_, Option<i64>>(first + 1)?
            .map(|m| u64::try_from(m).unwrap_or(0)),
        max_cpus: row.get(first + 2)?,
    })
}

fn key_info(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyInfo> {
    Ok(KeyInfo {
        id: row.get(0)?,
        team: row.get(1)?,
        name: row.get(2)?,
        prefix: row.get(3)?,
        created_at: row.get(4)?,
        revoked: row.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            team: "t".into(),
            template_id: "base".into(),
            alias: None,
            metadata: BTreeMap::from([("k".into(), "v".into())]),
            env_vars: BTreeMap::new(),
            envd_access_token: "tok".into(),
            traffic_access_token: None,
            started_at: 1,
            end_at: 2,
            cpu_count: 2,
            memory_mb: 512,
            disk_mb: 1024,
            allow_internet_access: true,
            handle: Some(cove_runtime::Handle {
                id: id.into(),
                backend: "namespace".into(),
                state: serde_json::json!({"pid": 42}),
            }),
            paused: Some(cove_runtime::PauseMode::Memory),
            lifecycle: LifecyclePolicy::default(),
            template: None,
            defaults: None,
            volumes: Vec::new(),
            egress: None,
            mask_request_host: None,
        }
    }

    #[test]
    fn keys_are_stored_hashed_and_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        assert!(!store.has_keys().unwrap());
        let (info, secret) = store.create_key("team-a", "first").unwrap();
        assert!(secret.starts_with("cove_"));
        assert_eq!(
            store.team_for_key(&secret).unwrap().as_deref(),
            Some("team-a")
        );
        assert_eq!(store.team_for_key("cove_wrong").unwrap(), None);
        // The same secret added again is the same key.
        assert_eq!(
            store.add_key("team-a", "again", &secret).unwrap().id,
            info.id
        );
        let raw: String = store
            .conn()
            .query_row("SELECT hash FROM api_keys", [], |r| r.get(0))
            .unwrap();
        assert!(!raw.contains(&secret[5..]));
        assert!(store.revoke_key(&info.id).unwrap());
        assert!(!store.revoke_key(&info.id).unwrap());
        assert_eq!(store.team_for_key(&secret).unwrap(), None);
        assert!(store.list_keys().unwrap()[0].revoked);
    }

    #[test]
    fn team_limits_are_kept_per_team() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store.create_key("with-key", "k").unwrap();
        assert_eq!(store.team_limits("a").unwrap(), TeamLimits::default());
        let limits = TeamLimits {
            max_sandboxes: Some(3),
            max_memory_mb: None,
            max_cpus: Some(4),
        };
        store.set_team_limits("a", limits).unwrap();
        assert_eq!(store.team_limits("a").unwrap(), limits);
        assert_eq!(
            store.teams().unwrap(),
            vec![
                ("a".to_owned(), limits),
                ("with-key".to_owned(), TeamLimits::default())
            ]
        );
    }

    #[test]
    fn sandboxes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Store::open(&path)
            .unwrap()
            .put_sandbox(&record("a"))
            .unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.sandboxes().unwrap(), vec![record("a")]);
        store.delete_sandbox("a").unwrap();
        assert!(store.sandboxes().unwrap().is_empty());
        // A record written before pauses existed still reads.
        let old: SandboxRecord = serde_json::from_str(
            r#"{"id":"o","team":"t","template_id":"base","alias":null,"metadata":{},"env_vars":{},"envd_access_token":"x","started_at":1,"end_at":2,"cpu_count":1,"memory_mb":64,"disk_mb":1,"allow_internet_access":false}"#,
        )
        .unwrap();
        assert_eq!(old.paused, None);
        assert_eq!(old.lifecycle, LifecyclePolicy::default());
    }

    #[test]
    fn templates_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        store
            .put_template("s1", "t", &serde_json::json!({"id": "s1"}))
            .unwrap();
        let store = Store::open(&path).unwrap();
        let all: Vec<serde_json::Value> = store.templates().unwrap();
        assert_eq!(all, vec![serde_json::json!({"id": "s1"})]);
        store.delete_template("s1").unwrap();
        assert!(store.templates::<serde_json::Value>().unwrap().is_empty());
    }
}
