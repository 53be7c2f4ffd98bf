//! `fromTemplate` naming a snapshot: its layers become the build's base. Layers the layer
//! store has already (those of the built template the snapshot was taken of) are retained
//! for the build; the snapshot's own layers (copies of a sandbox's writable layer, kept by
//! the snapshot machinery) are copied into the store, once: the copy's id is derived from
//! the snapshot layer's path, which names one content (snapshot layers never change).
//!
//! A snapshot of a sandbox of `base` has layers of the host's own files at several mount
//! points; it cannot be a base (as `base` cannot).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use cove_image::{Digest, LayerStore};
use cove_runtime::Template;

/// The store layers (top first) of a snapshot's `template`, copying in the ones the store
/// has not, each retained for `owner`.
pub fn store_layers(
    store: &LayerStore,
    template: &Template,
    owner: &str,
) -> Result<Vec<Digest>, String> {
    if template.layers.iter().any(|l| l.at != Path::new("/")) {
        return Err(
            "it is a snapshot of a sandbox of a built-in template (the host's own files); build from an image or a built template instead".to_owned(),
        );
    }
    let in_store = store.root().join("layers/sha256");
    let mut layers = Vec::with_capacity(template.layers.len());
    for layer in &template.layers {
        let known = layer
            .path
            .strip_prefix(&in_store)
            .ok()
            .and_then(|rest| rest.components().next())
            .and_then(|hex| Digest::from_hex(hex.as_os_str().to_str()?).ok());
        let digest = match known {
            Some(digest) => {
                store.retain(&digest, owner).map_err(|e| e.to_string())?;
                digest
            }
            None => copy_in(store, &layer.path, owner)?,
        };
        layers.push(digest);
    }
    Ok(layers)
}

/// Copies the snapshot layer at `path` into the store (unless a copy is there already).
fn copy_in(store: &LayerStore, path: &Path, owner: &str) -> Result<Digest, String> {
    let id = Digest::of(format!("cove-snapshot-layer:{}", path.display()).as_bytes());
    if store.contains(&id) {
        store.retain(&id, owner).map_err(|e| e.to_string())?;
        return Ok(id);
    }
    let staging = store.staging_dir().map_err(|e| e.to_string())?;
    let tree = staging.join("tree");
    // Host root copying a tree only host root writes (a snapshot layer, made by the copy
    // stage and never changed): links are copied as links (`-a`), never followed.
    let copied = Command::new("cp")
        .args(["-a", "--reflink=auto", "--no-target-directory"])
        .arg(path)
        .arg(&tree)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot copy the snapshot's layer: {e}"));
    let result = match copied {
        Ok(out) if out.status.success() => store
            .install_tree(&id, &tree, owner)
            .map(|_| id)
            .map_err(|e| e.to_string()),
        Ok(out) => Err(format!(
            "cannot copy the snapshot's layer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(err) => Err(err),
    };
    let _ = std::fs::remove_dir_all(&staging);
    result
}
