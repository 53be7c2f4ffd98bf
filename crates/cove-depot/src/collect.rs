//! Collecting the layers and snapshot directories no template or snapshot needs any more.
//!
//! What is needed is the caller's to say (every build of every template, every shared
//! snapshot: [`Kept`]). Everything else goes, but only once all its objects are older than a
//! grace period: a build or a snapshot writes its objects before it is recorded, and a
//! writer that finds an object there already refreshes its record ([`Depot::put`],
//! [`Depot::put_tree`]), so what is about to be used again is young. The record is checked
//! once more just before it goes, and goes first: a reader never finds a record without its
//! archive for longer than one delete takes.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use cove_image::Digest;
use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStoreExt, path::Path as ObjectPath};

use crate::{Depot, Result};

/// What must stay.
#[derive(Clone, Debug, Default)]
pub struct Kept {
    pub layers: HashSet<Digest>,
    /// Snapshot directories, by name.
    pub trees: HashSet<String>,
}

/// What a collection removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Layers and snapshot directories.
    pub removed: usize,
    pub freed_bytes: u64,
}

/// One layer's or directory's objects: its archive and its record.
#[derive(Default)]
struct Stored {
    objects: Vec<ObjectMeta>,
}

impl Stored {
    fn newest(&self) -> i64 {
        self.objects
            .iter()
            .map(|o| o.last_modified.timestamp_millis())
            .max()
            .unwrap_or(i64::MAX)
    }
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Depot {
    /// Removes the layers and snapshot directories not in `kept` whose objects are all older
    /// than `grace`.
    pub async fn collect(&self, kept: &Kept, grace: Duration) -> Result<Collected> {
        let cutoff = millis(SystemTime::now() - grace);
        let mut collected = Collected::default();
        let layers = self
            .listed(self.prefix.clone().join("layers").join("sha256"))
            .await?;
        for (key, stored) in layers {
            let keep = Digest::from_hex(&key).is_ok_and(|d| kept.layers.contains(&d));
            if !keep && self.remove_if_old(&stored, cutoff).await? {
                collected.removed += 1;
                collected.freed_bytes += stored.objects.iter().map(|o| o.size).sum::<u64>();
                tracing::info!(layer = %key, depot = %self.location, "unused layer removed from the object store");
            }
        }
        let trees = self.listed(self.prefix.clone().join("snapshots")).await?;
        for (key, stored) in trees {
            if !kept.trees.contains(&key) && self.remove_if_old(&stored, cutoff).await? {
                collected.removed += 1;
                collected.freed_bytes += stored.objects.iter().map(|o| o.size).sum::<u64>();
                tracing::info!(snapshot_dir = %key, depot = %self.location, "unused snapshot directory removed from the object store");
            }
        }
        Ok(collected)
    }

    /// The objects below `dir`, by the name before their suffix.
    async fn listed(&self, dir: ObjectPath) -> Result<HashMap<String, Stored>> {
        let listed: Vec<ObjectMeta> = self
            .objects
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(self.objects_err("list", &dir))?;
        let mut by_key: HashMap<String, Stored> = HashMap::new();
        for meta in listed {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let Some(key) = name
                .strip_suffix(".tar.gz")
                .or_else(|| name.strip_suffix(".json"))
            else {
                continue;
            };
            by_key.entry(key.to_owned()).or_default().objects.push(meta);
        }
        Ok(by_key)
    }

    /// Removes `stored` if all of it is older than `cutoff` (the record checked again
    /// first); whether it was removed.
    async fn remove_if_old(&self, stored: &Stored, cutoff: i64) -> Result<bool> {
        if stored.newest() >= cutoff {
            return Ok(false);
        }
        let mut objects: Vec<&ObjectMeta> = stored.objects.iter().collect();
        // The record first: without it, nobody takes the archive for complete.
        objects.sort_by_key(|o| !o.location.as_ref().ends_with(".json"));
        if let Some(record) = objects
            .first()
            .filter(|o| o.location.as_ref().ends_with(".json"))
        {
            match self.objects.head(&record.location).await {
                Ok(now) if now.last_modified.timestamp_millis() >= cutoff => return Ok(false),
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(self.objects_err("read", &record.location)(err)),
            }
        }
        for object in objects {
            match self.objects.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(self.objects_err("delete", &object.location)(err)),
            }
        }
        Ok(true)
    }
}
