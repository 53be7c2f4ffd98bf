//! Volumes of teams: named, quota'd filesystems that outlive sandboxes and restarts. The
//! catalogue is in the store; each volume's image and host mount point live under
//! `<state>/volumes/<id>/` (host root's alone). A volume is mounted on the host when first
//! used after a start and unmounted at shutdown or when deleted.

use std::{
    collections::HashSet,
    io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Component, Path, PathBuf},
    sync::{Arc, Mutex},
};

use cove_runtime::{volume::VolumeMount, volume_files::VolumeRoot};

use crate::{
    clock, secrets,
    store::{MountedVolume, Store, StoreError, VolumeRecord},
};

/// The longest volume name.
const MAX_NAME: usize = 64;
/// The smallest quota: what ext4 needs to be useful.
pub const MIN_SIZE_MB: u64 = 8;
/// The largest quota (a sparse image takes only what is written).
pub const MAX_SIZE_MB: u64 = 1 << 20;
/// How long a stopping server waits for an unmounted volume's loop device to detach.
const DETACH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
/// Places in a sandbox a volume may not cover: what the runtime mounts there itself.
const RESERVED: &[&str] = &["/proc", "/sys", "/dev"];

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("invalid volume name {0:?}: use 1 to {MAX_NAME} letters, digits, '-' and '_'")]
    BadName(String),
    #[error("a volume named {0:?} exists already")]
    NameTaken(String),
    #[error("volume {0} not found")]
    NotFound(String),
    #[error("volume {name:?} is mounted in sandbox(es) {}: kill them before deleting it", .sandboxes.join(", "))]
    InUse {
        name: String,
        sandboxes: Vec<String>,
    },
    #[error("invalid volume mount: {0}")]
    BadMount(String),
    #[error("volume size must be between {MIN_SIZE_MB} and {MAX_SIZE_MB} MiB, got {0}")]
    BadSize(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot {what} volume {id}")]
    Io {
        what: &'static str,
        id: String,
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, VolumeError>;

/// The volumes of this server.
#[derive(Debug)]
pub struct Volumes {
    store: Arc<Store>,
    dir: PathBuf,
    default_size_mb: u64,
    /// Volumes mounted on the host by this server; creates, deletes and mounts take turns.
    mounted: Mutex<HashSet<String>>,
}

impl Volumes {
    /// The volumes under `<state_dir>/volumes`, new ones of `default_size_mb`.
    pub fn open(store: Arc<Store>, state_dir: &Path, default_size_mb: u64) -> io::Result<Self> {
        let dir = state_dir.join("volumes");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let volumes = Self {
            store,
            dir,
            default_size_mb,
            mounted: Mutex::default(),
        };
        volumes.adopt_mounts();
        Ok(volumes)
    }

    /// Takes over the host mounts a server that died left, so that they are unmounted at
    /// shutdown even when nothing uses them meanwhile.
    fn adopt_mounts(&self) {
        let known = match self.store.volumes() {
            Ok(known) => known,
            Err(err) => {
                tracing::warn!(?err, "cannot list volumes to take over their mounts");
                return;
            }
        };
        let mut mounted = self.turn();
        for volume in known {
            match cove_runtime::volume::is_mount_point(&self.mountpoint(&volume.id)) {
                Ok(true) => {
                    mounted.insert(volume.id);
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(?err, volume_id = %volume.id, "cannot look at a volume's mount")
                }
            }
        }
    }

    fn image(&self, id: &str) -> PathBuf {
        self.dir.join(id).join("image")
    }

    fn mountpoint(&self, id: &str) -> PathBuf {
        self.dir.join(id).join("mnt")
    }

    fn turn(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.mounted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a volume for `team` (blocks while it is formatted).
    pub fn create(&self, team: &str, name: &str, size_mb: Option<u64>) -> Result<VolumeRecord> {
        check_name(name)?;
        let size_mb = size_mb.unwrap_or(self.default_size_mb);
        if !(MIN_SIZE_MB..=MAX_SIZE_MB).contains(&size_mb) {
            return Err(VolumeError::BadSize(size_mb));
        }
        if self.find(team, |v| v.name == name)?.is_some() {
            return Err(VolumeError::NameTaken(name.to_owned()));
        }
        let record = VolumeRecord {
            id: format!("vol_{}", secrets::random_id(20)),
            team: team.to_owned(),
            name: name.to_owned(),
            token: secrets::random_token(),
            size_mb,
            created_at: clock::now_ms(),
        };
        let mut mounted = self.turn();
        let io = |what| {
            let id = record.id.clone();
            move |source| VolumeError::Io { what, id, source }
        };
        let mountpoint = self.mountpoint(&record.id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&mountpoint)
            .map_err(io("make the directory of"))?;
        let made =
            cove_runtime::volume::create(&self.image(&record.id), &mountpoint, size_mb << 20)
                .map_err(io("format"));
        let stored = made.and_then(|()| match self.store.insert_volume(&record) {
            Err(err) if err.is_conflict() => Err(VolumeError::NameTaken(name.to_owned())),
            other => other.map_err(VolumeError::from),
        });
        if let Err(err) = stored {
            let _ = cove_runtime::volume::unmount(&mountpoint);
            let _ = std::fs::remove_dir_all(self.dir.join(&record.id));
            return Err(err);
        }
        mounted.insert(record.id.clone());
        tracing::info!(volume_id = %record.id, team, name, size_mb, "volume created");
        Ok(record)
    }

    fn find(
        &self,
        team: &str,
        pick: impl Fn(&VolumeRecord) -> bool,
    ) -> Result<Option<VolumeRecord>> {
        Ok(self
            .store
            .volumes()?
            .into_iter()
            .find(|v| v.team == team && pick(v)))
    }

    /// The volumes of `team`, oldest first.
    pub fn list(&self, team: &str) -> Result<Vec<VolumeRecord>> {
        let mut volumes = self.store.volumes()?;
        volumes.retain(|v| v.team == team);
        Ok(volumes)
    }

    /// A volume of `team` by id (another team's is not found).
    pub fn get(&self, team: &str, id: &str) -> Result<VolumeRecord> {
        self.find(team, |v| v.id == id)?
            .ok_or_else(|| VolumeError::NotFound(id.to_owned()))
    }

    /// A volume by id, for a request that shows its token; `None` when either is wrong.
    pub fn by_token(&self, id: &str, token: &str) -> Result<Option<VolumeRecord>> {
        Ok(self.store.volumes()?.into_iter().find(|v| {
            v.id == id
                && cove_proto::signing::constant_time_eq(v.token.as_bytes(), token.as_bytes())
        }))
    }

    /// Deletes a volume of `team` and its files; refused while a sandbox mounts it.
    pub fn delete(&self, team: &str, id: &str) -> Result<()> {
        let record = self.get(team, id)?;
        let mut mounted = self.turn();
        let users: Vec<String> = self
            .store
            .sandboxes()?
            .into_iter()
            .filter(|s| s.volumes.iter().any(|m| m.volume_id == record.id))
            .map(|s| s.id)
            .collect();
        if !users.is_empty() {
            return Err(VolumeError::InUse {
                name: record.name,
                sandboxes: users,
            });
        }
        let io = |what| {
            let id = record.id.clone();
            move |source| VolumeError::Io { what, id, source }
        };
        cove_runtime::volume::unmount(&self.mountpoint(&record.id)).map_err(io("unmount"))?;
        mounted.remove(&record.id);
        self.store.delete_volume(&record.id)?;
        std::fs::remove_dir_all(self.dir.join(&record.id)).map_err(io("remove the files of"))?;
        tracing::info!(volume_id = %record.id, team, name = %record.name, "volume deleted");
        Ok(())
    }

    /// Mounts the volume on the host unless it is.
    fn ensure_mounted(&self, id: &str) -> Result<PathBuf> {
        let mut mounted = self.turn();
        let mountpoint = self.mountpoint(id);
        if !mounted.contains(id) {
            cove_runtime::volume::mount(&self.image(id), &mountpoint).map_err(|source| {
                VolumeError::Io {
                    what: "mount",
                    id: id.to_owned(),
                    source,
                }
            })?;
            mounted.insert(id.to_owned());
        }
        Ok(mountpoint)
    }

    /// The root of a volume, for the content API (blocks while it is mounted).
    pub fn root(&self, volume: &VolumeRecord) -> Result<VolumeRoot> {
        let mountpoint = self.ensure_mounted(&volume.id)?;
        VolumeRoot::open(&mountpoint).map_err(|source| VolumeError::Io {
            what: "open",
            id: volume.id.clone(),
            source,
        })
    }

    /// The volumes a create asks for, checked: each of `team`, by name, at a plain absolute
    /// path of its own.
    pub fn resolve(&self, team: &str, asked: &[(String, String)]) -> Result<Vec<MountedVolume>> {
        let mut mounts: Vec<MountedVolume> = Vec::new();
        for (name, path) in asked {
            let path = check_mount_path(path)?;
            if let Some(other) = mounts.iter().find(|m| {
                Path::new(&m.path).starts_with(&path) || Path::new(&path).starts_with(&m.path)
            }) {
                return Err(VolumeError::BadMount(format!(
                    "{path} and {} overlap",
                    other.path
                )));
            }
            let volume = self
                .find(team, |v| &v.name == name)?
                .ok_or_else(|| VolumeError::NotFound(name.clone()))?;
            mounts.push(MountedVolume {
                volume_id: volume.id,
                name: volume.name,
                path,
            });
        }
        Ok(mounts)
    }

    /// What the runtime mounts into a sandbox for `mounts` (blocks while they are mounted
    /// on the host).
    fn for_runtime(&self, mounts: &[MountedVolume]) -> Result<Vec<VolumeMount>> {
        mounts
            .iter()
            .map(|m| {
                Ok(VolumeMount {
                    source: self.ensure_mounted(&m.volume_id)?,
                    target: PathBuf::from(&m.path),
                })
            })
            .collect()
    }

    /// Sets the volumes `spec`'s sandbox mounts (blocks while they are mounted on the host);
    /// a volume that cannot be mounted fails the sandbox's start.
    pub fn attach(
        &self,
        spec: &mut cove_runtime::SandboxSpec,
        mounts: &[MountedVolume],
    ) -> std::result::Result<(), cove_runtime::RuntimeError> {
        spec.volumes =
            self.for_runtime(mounts)
                .map_err(|err| cove_runtime::RuntimeError::Start {
                    id: spec.id.clone(),
                    reason: err.to_string(),
                })?;
        Ok(())
    }

    /// Unmounts every volume from the host (sandboxes keep their own mounts). With
    /// `sandboxes_gone` (no sandbox outlives the server), also waits for their loop devices
    /// to detach, so that nothing of them is left once the server has exited.
    pub fn shutdown(&self, sandboxes_gone: bool) {
        let mut mounted = self.turn();
        let mut unmounted = Vec::new();
        for id in mounted.drain() {
            match cove_runtime::volume::unmount(&self.mountpoint(&id)) {
                Ok(()) => unmounted.push(id),
                Err(err) => tracing::warn!(?err, volume_id = %id, "cannot unmount a volume"),
            }
        }
        if !sandboxes_gone {
            return;
        }
        let started = std::time::Instant::now();
        for id in unmounted {
            match cove_runtime::volume::wait_detached(&self.image(&id), DETACH_PATIENCE) {
                Ok(true) => {
                    tracing::debug!(volume_id = %id, waited = ?started.elapsed(), "volume detached")
                }
                Ok(false) => tracing::warn!(
                    volume_id = %id,
                    waited = ?started.elapsed(),
                    "a volume's loop device is still attached: something still uses its filesystem"
                ),
                Err(err) => {
                    tracing::warn!(?err, volume_id = %id, "cannot look for a volume's loop device")
                }
            }
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    let fine = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if fine {
        Ok(())
    } else {
        Err(VolumeError::BadName(name.to_owned()))
    }
}

/// An absolute path of plain names, not `/` and not where the runtime mounts its own.
fn check_mount_path(path: &str) -> Result<String> {
    let bad = |why: &str| VolumeError::BadMount(format!("path {path:?} {why}"));
    if !path.starts_with('/') {
        return Err(bad("is not absolute"));
    }
    if path.contains('\0') || path.len() > 1024 {
        return Err(bad("is not a usable path"));
    }
    let mut clean = PathBuf::from("/");
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => clean.push(name),
            Component::ParentDir | Component::Prefix(_) => return Err(bad("contains '..'")),
        }
    }
    if clean == Path::new("/") {
        return Err(bad("is the sandbox's root"));
    }
    if RESERVED.iter().any(|r| clean.starts_with(r)) {
        return Err(bad("is where the sandbox's kernel filesystems are"));
    }
    Ok(clean.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_checked() {
        assert!(check_name("data-1_x").is_ok());
        for bad in ["", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_mount_path("/mnt//data/").unwrap(), "/mnt/data");
        for bad in ["mnt", "/", "/mnt/../etc", "/proc/x", "/dev"] {
            assert!(check_mount_path(bad).is_err(), "{bad:?}");
        }
    }
}
