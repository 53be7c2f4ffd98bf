//! The server's state in its database (an SQLite file in the state directory, or PostgreSQL;
//! `cove-db`): API keys (hashed), teams' limits, sandboxes (so a restarted server finds its
//! running and paused sandboxes again), volumes and the templates made of snapshots.

use std::collections::{BTreeMap, HashMap};

use cove_db::{Db, Location, Row, Sql, params};
use serde::{Deserialize, Serialize};

use crate::secrets;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] cove_db::DbError),
    #[error("a stored sandbox record is unreadable")]
    Record(#[from] serde_json::Error),
    #[error("{0}")]
    Taken(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// Whether a row like this one exists already (a unique column repeated).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Db(err) if err.is_conflict())
    }

    /// Whether the database could not be written because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Db(err) if err.is_disk_full())
    }

    /// Whether the database server could not be reached.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Db(err) if err.is_unavailable())
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

/// The state database.
pub struct Store {
    db: Db,
    /// The cluster node whose sandboxes this store keeps ([`Store::for_node`]); none for a
    /// server on its own.
    node: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("db", &self.db).finish()
    }
}

const KEY_COLUMNS: &str = "id, team, name, prefix, created_at, revoked_at IS NOT NULL";

impl Store {
    /// Opens (creating and migrating if needed) the database at `location`.
    pub fn open(location: &Location) -> Result<Self> {
        Ok(Self {
            db: Db::open(location)?,
            node: None,
        })
    }

    /// The store of cluster node `node`: the sandboxes it records are that node's, and the
    /// ones it reads back only those.
    pub fn for_node(self, node: &str) -> Self {
        Self {
            node: Some(node.to_owned()),
            ..self
        }
    }

    /// The node this store keeps the sandboxes of.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// Holds the sandboxes this store keeps (a server's, or its node's) for this process
    /// while it runs, so a second server cannot take them over ([`cove_db::Db::claim`]).
    pub fn claim(&self) -> Result<()> {
        let (what, taken) = match &self.node {
            Some(node) => (
                format!("node {node}"),
                format!("another cove serve runs node {node} on this database"),
            ),
            None => (
                "a server without --role".to_owned(),
                "another cove serve uses this database (a server without --role has it to itself; servers that share one run with --role node)".to_owned(),
            ),
        };
        match self.db.claim(&what) {
            Err(cove_db::DbError::Claimed(_)) => Err(StoreError::Taken(taken)),
            other => Ok(other?),
        }
    }

    /// The database underneath, for the cluster's own tables.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Whether any key (revoked or not) was ever stored.
    pub fn has_keys(&self) -> Result<bool> {
        let count = self
            .db
            .query_row("SELECT COUNT(*) FROM api_keys", &[])?
            .map_or(Ok(0), |r| r.int(0))?;
        Ok(count > 0)
    }

    /// Stores `secret` as a key of `team` (again a no-op when it is already there).
    pub fn add_key(&self, team: &str, name: &str, secret: &str) -> Result<KeyInfo> {
        self.db
            .transaction(|sql| insert_key(sql, team, name, secret))?
    }

    /// A first key for `team` when the database has none at all (a new server or cluster),
    /// its secret returned once; none when there are keys. Servers that start together on
    /// one database make one between them.
    pub fn create_first_key(&self, team: &str, name: &str) -> Result<Option<(KeyInfo, String)>> {
        self.db.exclusive("the first API key", |sql| {
            let count = sql
                .query_row("SELECT COUNT(*) FROM api_keys", &[])?
                .map_or(Ok(0), |r| r.int(0))?;
            if count > 0 {
                return Ok(Ok(None));
            }
            let secret = secrets::new_api_key();
            Ok(insert_key(sql, team, name, &secret)?.map(|info| Some((info, secret))))
        })?
    }

    /// Creates a new random key for `team`; the secret is returned once and never stored.
    pub fn create_key(&self, team: &str, name: &str) -> Result<(KeyInfo, String)> {
        let secret = secrets::new_api_key();
        let info = self.add_key(team, name, &secret)?;
        Ok((info, secret))
    }

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.db
            .query(
                &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"),
                &[],
            )?
            .iter()
            .map(key_info)
            .collect()
    }

    /// Revokes a key by id; `false` when there is no such (unrevoked) key.
    pub fn revoke_key(&self, id: &str) -> Result<bool> {
        let changed = self.db.transaction(|sql| {
            let changed = sql.execute(
                "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, crate::clock::now_ms()],
            )?;
            if changed > 0 {
                keys_changed(sql)?;
            }
            Ok(changed)
        })?;
        Ok(changed > 0)
    }

    /// The team a (non-revoked) key belongs to.
    pub fn team_for_key(&self, secret: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .query_row(
                "SELECT team FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL",
                params![secrets::hash_key(secret)],
            )?
            .map(|r| r.text(0))
            .transpose()?)
    }

    /// Every valid (non-revoked) key's hash, with its team.
    pub fn valid_keys(&self) -> Result<HashMap<String, String>> {
        self.db
            .query(
                "SELECT hash, team FROM api_keys WHERE revoked_at IS NULL",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect()
    }

    /// A number that moves whenever a key is added or revoked, by any process.
    pub fn keys_version(&self) -> Result<i64> {
        Ok(self
            .db
            .query_row("SELECT version FROM versions WHERE name = 'keys'", &[])?
            .map_or(Ok(0), |r| r.int(0))?)
    }

    /// What `team` may use (no limits unless some were set).
    pub fn team_limits(&self, team: &str) -> Result<TeamLimits> {
        Ok(self
            .db
            .query_row(
                "SELECT max_sandboxes, max_memory_mb, max_cpus FROM teams WHERE name = ?1",
                params![team],
            )?
            .map(|row| team_limits_at(&row, 0))
            .transpose()?
            .unwrap_or_default())
    }

    /// Sets what `team` may use (replacing what was set before).
    pub fn set_team_limits(&self, team: &str, limits: TeamLimits) -> Result<()> {
        self.db.execute(
            "INSERT INTO teams (name, max_sandboxes, max_memory_mb, max_cpus) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET max_sandboxes = excluded.max_sandboxes,
               max_memory_mb = excluded.max_memory_mb, max_cpus = excluded.max_cpus",
            params![
                team,
                limits.max_sandboxes,
                limits.max_memory_mb,
                limits.max_cpus
            ],
        )?;
        Ok(())
    }

    /// Every team that has keys or limits, with its limits, by name.
    pub fn teams(&self) -> Result<Vec<(String, TeamLimits)>> {
        self.db
            .query(
                "SELECT names.name, t.max_sandboxes, t.max_memory_mb, t.max_cpus
                 FROM (SELECT team AS name FROM api_keys UNION SELECT name FROM teams) AS names
                 LEFT JOIN teams AS t ON t.name = names.name ORDER BY names.name",
                &[],
            )?
            .iter()
            .map(|row| Ok((row.text(0)?, team_limits_at(row, 1)?)))
            .collect()
    }

    /// Inserts or replaces a sandbox's record.
    pub fn put_sandbox(&self, record: &SandboxRecord) -> Result<()> {
        self.db.execute(
            "INSERT INTO sandboxes (id, team, record, node) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET team = excluded.team, record = excluded.record, node = excluded.node",
            params![&record.id, &record.team, serde_json::to_string(record)?, self.node.as_deref()],
        )?;
        Ok(())
    }

    pub fn delete_sandbox(&self, id: &str) -> Result<()> {
        self.db
            .execute("DELETE FROM sandboxes WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Inserts or replaces a template of `team` (a snapshot), stored as JSON, on this
    /// store's node (where its layers are).
    pub fn put_template<T: Serialize>(&self, id: &str, team: &str, entry: &T) -> Result<()> {
        self.db.execute(
            "INSERT INTO templates (id, team, entry, node) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET team = excluded.team, entry = excluded.entry, node = excluded.node",
            params![id, team, serde_json::to_string(entry)?, self.node.as_deref()],
        )?;
        Ok(())
    }

    pub fn delete_template(&self, id: &str) -> Result<()> {
        self.db
            .execute("DELETE FROM templates WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every stored template (of a node: those whose layers are on it).
    pub fn templates<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        match &self.node {
            Some(node) => self.records_where(
                "SELECT entry FROM templates WHERE node = ?1 OR node IS NULL ORDER BY id",
                &[cove_db::Value::from(node.as_str())],
            ),
            None => self.records("SELECT entry FROM templates ORDER BY id"),
        }
    }

    /// Every stored template, on every node.
    pub fn every_template<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.records("SELECT entry FROM templates ORDER BY id")
    }

    /// `team`'s stored templates on every node, with the node each is on (none: a server
    /// that is not part of a cluster).
    pub fn cluster_templates<T: serde::de::DeserializeOwned>(
        &self,
        team: &str,
    ) -> Result<Vec<(T, Option<String>)>> {
        self.db
            .query(
                "SELECT entry, node FROM templates WHERE team = ?1 ORDER BY id",
                params![team],
            )?
            .iter()
            .map(|row| Ok((serde_json::from_str(&row.text(0)?)?, row.opt_text(1)?)))
            .collect()
    }

    /// Stored template `id` (on any node).
    pub fn template<T: serde::de::DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        Ok(self
            .records_where(
                "SELECT entry FROM templates WHERE id = ?1",
                &[cove_db::Value::from(id)],
            )?
            .pop())
    }

    /// The ids of every stored template, on every node.
    pub fn template_ids(&self) -> Result<std::collections::HashSet<String>> {
        self.db
            .query("SELECT id FROM templates", params![])?
            .iter()
            .map(|row| Ok(row.text(0)?))
            .collect()
    }

    /// Adds a volume; a conflict ([`StoreError::is_conflict`]) when its team has one of
    /// that name.
    pub fn insert_volume(&self, volume: &VolumeRecord) -> Result<()> {
        self.db.execute(
            "INSERT INTO volumes (id, team, name, record) VALUES (?1, ?2, ?3, ?4)",
            params![
                &volume.id,
                &volume.team,
                &volume.name,
                serde_json::to_string(volume)?
            ],
        )?;
        Ok(())
    }

    pub fn delete_volume(&self, id: &str) -> Result<()> {
        self.db
            .execute("DELETE FROM volumes WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Every volume, oldest first.
    pub fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        let mut volumes: Vec<VolumeRecord> = self.records("SELECT record FROM volumes")?;
        volumes.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(volumes)
    }

    /// The sandboxes this store keeps (its node's, or those of no node).
    pub fn sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        self.records_where(
            "SELECT record FROM sandboxes WHERE node IS NOT DISTINCT FROM ?1 ORDER BY id",
            params![self.node.as_deref()],
        )
    }

    /// Where sandbox `id` of `team` runs when it is another node's: that node as it last
    /// reported itself (none for a sandbox of this store's own, or one there is no record
    /// of).
    pub fn node_of_other(&self, team: &str, id: &str) -> Result<Option<crate::cluster::NodeRow>> {
        let Some(own) = &self.node else {
            return Ok(None);
        };
        let row = self.db.query_row(
            &format!(
                "SELECT {} FROM sandboxes AS s JOIN nodes AS n ON n.id = s.node
                 WHERE s.id = ?1 AND s.team = ?2 AND s.node <> ?3",
                crate::cluster::NODE_COLUMNS_OF_N
            ),
            params![id, team, own],
        )?;
        row.map(|row| crate::cluster::node_row(&row)).transpose()
    }

    /// `team`'s sandboxes on the nodes of the cluster that are not down.
    pub fn cluster_sandboxes(&self, team: &str) -> Result<Vec<SandboxRecord>> {
        self.records_where(
            "SELECT s.record FROM sandboxes AS s JOIN nodes AS n ON n.id = s.node
             WHERE s.team = ?1 AND n.state <> 'down' ORDER BY s.id",
            params![team],
        )
    }

    /// The sandboxes of every node with their node (`id`: that one only), for routing.
    pub fn placed(
        &self,
        id: Option<&str>,
    ) -> Result<Vec<(SandboxRecord, crate::cluster::NodeRow)>> {
        let condition = if id.is_some() { "WHERE s.id = ?1" } else { "" };
        let params = id
            .map(|id| vec![cove_db::Value::from(id)])
            .unwrap_or_default();
        self.db
            .query(
                &format!(
                    "SELECT s.record, {} FROM sandboxes AS s JOIN nodes AS n ON n.id = s.node {condition}",
                    crate::cluster::NODE_COLUMNS_OF_N
                ),
                &params,
            )?
            .iter()
            .map(|row| {
                let record = serde_json::from_str(&row.text(0)?)?;
                Ok((record, crate::cluster::node_row(&row.skip(1))?))
            })
            .collect()
    }

    /// The JSON records `query` selects (one column), read back.
    fn records<T: serde::de::DeserializeOwned>(&self, query: &str) -> Result<Vec<T>> {
        self.records_where(query, &[])
    }

    fn records_where<T: serde::de::DeserializeOwned>(
        &self,
        query: &str,
        params: &[cove_db::Value],
    ) -> Result<Vec<T>> {
        self.db
            .query(query, params)?
            .iter()
            .map(|row| Ok(serde_json::from_str(&row.text(0)?)?))
            .collect()
    }
}

/// Moves the keys' version ([`Store::keys_version`]) in the transaction that changed them.
fn keys_changed(sql: &mut dyn Sql) -> cove_db::Result<()> {
    sql.execute(
        "UPDATE versions SET version = version + 1 WHERE name = 'keys'",
        &[],
    )?;
    Ok(())
}

fn team_limits_at(row: &Row, first: usize) -> Result<TeamLimits> {
    Ok(TeamLimits {
        max_sandboxes: row.opt_u32(first)?,
        max_memory_mb: row
            .opt_int(first + 1)?
            .map(|m| u64::try_from(m).unwrap_or(0)),
        max_cpus: row.opt_u32(first + 2)?,
    })
}

fn key_info(row: &Row) -> Result<KeyInfo> {
    Ok(KeyInfo {
        id: row.text(0)?,
        team: row.text(1)?,
        name: row.text(2)?,
        prefix: row.text(3)?,
        created_at: row.int(4)?,
        revoked: row.flag(5)?,
    })
}

/// Stores `secret` as a key of `team` in `sql`'s transaction (a no-op when it is there).
fn insert_key(
    sql: &mut dyn Sql,
    team: &str,
    name: &str,
    secret: &str,
) -> cove_db::Result<Result<KeyInfo>> {
    let hash = secrets::hash_key(secret);
    let existing = sql.query_row(
        &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"),
        params![&hash],
    )?;
    if let Some(row) = existing {
        return Ok(key_info(&row));
    }
    let info = KeyInfo {
        id: secrets::random_id(12),
        team: team.to_owned(),
        name: name.to_owned(),
        prefix: secret.chars().take(12).collect(),
        created_at: crate::clock::now_ms(),
        revoked: false,
    };
    sql.execute(
        "INSERT INTO api_keys (id, team, name, hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![&info.id, &info.team, &info.name, &hash, &info.prefix, info.created_at],
    )?;
    keys_changed(sql)?;
    Ok(Ok(info))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(id: &str) -> SandboxRecord {
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
    fn a_first_key_is_made_once_among_servers_starting_together() {
        crate::test_backends::each(|location| {
            // Opened first, then all at once. Within one process the check-then-insert race
            // is rarely hit even without the advisory lock (it is across processes that it
            // matters); this holds the contract: one key, then none.
            let stores: Vec<Store> = (0..6).map(|_| Store::open(location).unwrap()).collect();
            let together = std::sync::Barrier::new(stores.len());
            let made: Vec<Option<(KeyInfo, String)>> = std::thread::scope(|scope| {
                let starts: Vec<_> = stores
                    .iter()
                    .map(|store| {
                        let together = &together;
                        scope.spawn(move || {
                            together.wait();
                            store.create_first_key("team-a", "first key").unwrap()
                        })
                    })
                    .collect();
                starts.into_iter().map(|s| s.join().unwrap()).collect()
            });
            assert_eq!(made.iter().flatten().count(), 1, "{made:?}");
            let store = Store::open(location).unwrap();
            assert_eq!(store.list_keys().unwrap().len(), 1);
            assert!(store.create_first_key("team-a", "again").unwrap().is_none());
        });
    }

    #[test]
    fn keys_are_stored_hashed_and_can_be_revoked() {
        crate::test_backends::each(|location| {
            let store = Store::open(location).unwrap();
            assert!(!store.has_keys().unwrap());
            let version = store.keys_version().unwrap();
            let (info, secret) = store.create_key("team-a", "first").unwrap();
            assert!(secret.starts_with("cove_"));
            assert_eq!(
                store.team_for_key(&secret).unwrap().as_deref(),
                Some("team-a")
            );
            assert_eq!(store.team_for_key("cove_wrong").unwrap(), None);
            assert!(store.keys_version().unwrap() > version);
            // The same secret added again is the same key, and changes nothing.
            let version = store.keys_version().unwrap();
            assert_eq!(
                store.add_key("team-a", "again", &secret).unwrap().id,
                info.id
            );
            assert_eq!(store.keys_version().unwrap(), version);
            let raw = store
                .db
                .query_row("SELECT hash FROM api_keys", &[])
                .unwrap()
                .unwrap()
                .text(0)
                .unwrap();
            assert!(!raw.contains(&secret[5..]));
            assert!(store.revoke_key(&info.id).unwrap());
            assert!(!store.revoke_key(&info.id).unwrap());
            assert!(store.keys_version().unwrap() > version);
            assert_eq!(store.team_for_key(&secret).unwrap(), None);
            assert!(store.list_keys().unwrap()[0].revoked);
        });
    }

    #[test]
    fn team_limits_are_kept_per_team() {
        crate::test_backends::each(|location| {
            let store = Store::open(location).unwrap();
            store.create_key("with-key", "k").unwrap();
            assert_eq!(store.team_limits("a").unwrap(), TeamLimits::default());
            let limits = TeamLimits {
                max_sandboxes: Some(3),
                max_memory_mb: None,
                max_cpus: Some(4),
            };
            store.set_team_limits("a", limits).unwrap();
            assert_eq!(store.team_limits("a").unwrap(), limits);
            let changed = TeamLimits {
                max_memory_mb: Some(2048),
                ..limits
            };
            store.set_team_limits("a", changed).unwrap();
            assert_eq!(
                store.teams().unwrap(),
                vec![
                    ("a".to_owned(), changed),
                    ("with-key".to_owned(), TeamLimits::default())
                ]
            );
        });
    }

    #[test]
    fn sandboxes_survive_reopening() {
        crate::test_backends::each(|location| {
            Store::open(location)
                .unwrap()
                .put_sandbox(&record("a"))
                .unwrap();
            let store = Store::open(location).unwrap();
            assert_eq!(store.sandboxes().unwrap(), vec![record("a")]);
            let mut changed = record("a");
            changed.end_at = 99;
            store.put_sandbox(&changed).unwrap();
            assert_eq!(store.sandboxes().unwrap(), vec![changed]);
            store.delete_sandbox("a").unwrap();
            assert!(store.sandboxes().unwrap().is_empty());
        });
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
        crate::test_backends::each(|location| {
            let store = Store::open(location).unwrap();
            store
                .put_template("s1", "t", &serde_json::json!({"id": "s1"}))
                .unwrap();
            let store = Store::open(location).unwrap();
            let all: Vec<serde_json::Value> = store.templates().unwrap();
            assert_eq!(all, vec![serde_json::json!({"id": "s1"})]);
            store.delete_template("s1").unwrap();
            assert!(store.templates::<serde_json::Value>().unwrap().is_empty());
        });
    }

    #[test]
    fn volumes_are_unique_per_team_and_listed_oldest_first() {
        crate::test_backends::each(|location| {
            let store = Store::open(location).unwrap();
            let volume = |id: &str, team: &str, name: &str, created_at: i64| VolumeRecord {
                id: id.into(),
                team: team.into(),
                name: name.into(),
                token: "t".into(),
                size_mb: 10,
                created_at,
            };
            store.insert_volume(&volume("v2", "a", "data", 2)).unwrap();
            store.insert_volume(&volume("v1", "b", "data", 1)).unwrap();
            let taken = store
                .insert_volume(&volume("v3", "a", "data", 3))
                .unwrap_err();
            assert!(taken.is_conflict(), "{taken:?}");
            let ids: Vec<String> = store.volumes().unwrap().into_iter().map(|v| v.id).collect();
            assert_eq!(ids, ["v1", "v2"]);
            store.delete_volume("v1").unwrap();
            assert_eq!(store.volumes().unwrap().len(), 1);
        });
    }
}
