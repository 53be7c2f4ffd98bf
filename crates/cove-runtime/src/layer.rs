//! Freezing a sandbox's writable layer into read-only template layers (a snapshot).
//!
//! Each mount point of a sandbox has a writable directory (its overlay's upper) on the
//! sandbox's disk; a snapshot copies those into a directory on the host, where they become
//! layers on top of the sandbox's template. The copy keeps everything overlayfs needs to read
//! them as lower layers: owners (stored as the sandbox sees them, see [`crate::idmap`]),
//! modes, extended attributes (opaque directories), whiteouts (character devices 0/0), hard
//! links, holes. It is made with `cp -a --reflink=auto --sparse=always`: blocks are shared
//! where source and copy are on one filesystem that can (no disk quota, on btrfs or XFS),
//! else only the data is copied, holes stay holes.
//!
//! The sandbox's disk is mounted only inside its own mount namespace, so the copy runs in a
//! stage of its own (`cove __sandbox-init --copy-layers`, host root) that mounts it in a
//! private mount namespace: the loop device of a running (frozen) sandbox, which shares that
//! sandbox's filesystem, or the image itself for a sandbox whose processes are gone. Nothing
//! it mounts outlives it.

use std::{
    fs,
    io::{self, Read},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::{Deserialize, Serialize};

use crate::{disk, mounts, namespace::init, stage};

/// The stage's flag.
pub const COPY_FLAG: &str = "--copy-layers";

/// What the copy stage is asked to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CopySpec {
    /// The sandbox's directory.
    pub dir: PathBuf,
    /// Its disk image, when it has one; else the writable layers are in `<dir>/disk`.
    pub image: Option<PathBuf>,
    /// The disk's loop device must already exist (the sandbox runs): never attach a second.
    pub attached: bool,
    /// How many mount points the sandbox has (writable layers `0..points`).
    pub points: usize,
    /// Where the copies go (`<into>/<i>`); must not exist yet.
    pub into: PathBuf,
}

/// What the copy stage reports on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyReport {
    /// The writable layers that were copied (the others do not exist or are empty).
    Copied(Vec<usize>),
    Failed(String),
}

/// Copies the writable layers `spec` names, through the `cove` binary at `exe`.
pub fn copy(exe: &Path, spec: &CopySpec) -> io::Result<Vec<usize>> {
    match stage::run(exe, COPY_FLAG, spec)? {
        CopyReport::Copied(copied) => Ok(copied),
        CopyReport::Failed(error) => Err(io::Error::other(error)),
    }
}

/// `template` with the writable layers [`copy`] copied into `into` on top (by their indexes
/// `copied` among `template`'s mount points): what a sandbox starts from to find the files
/// as they were. No memory image.
pub fn on_top(template: &crate::Template, copied: Vec<usize>, into: &Path) -> crate::Template {
    let points = template.mount_points();
    let mut layers: Vec<crate::Layer> = copied
        .into_iter()
        .map(|i| crate::Layer {
            path: into.join(i.to_string()),
            at: points[i].clone(),
        })
        .collect();
    layers.extend(template.layers.iter().cloned());
    crate::Template {
        name: template.name.clone(),
        layers,
        memory: None,
    }
}

/// The copy stage (host root, its own process): reads a [`CopySpec`] on stdin and answers
/// with a [`CopyReport`].
pub fn run_stage() -> io::Result<()> {
    let report = match stage() {
        Ok(copied) => CopyReport::Copied(copied),
        Err(err) => CopyReport::Failed(err.to_string()),
    };
    stage::answer(&report)
}

fn stage() -> io::Result<Vec<usize>> {
    let mut raw = Vec::new();
    io::stdin().read_to_end(&mut raw)?;
    let spec: CopySpec = serde_json::from_slice(&raw).map_err(io::Error::other)?;
    let disk_dir = spec.dir.join("disk");
    // This stage is a fresh single-threaded process.
    init::unshare(rustix::thread::UnshareFlags::NEWNS)?;
    mounts::make_private()?;
    if let Some(image) = &spec.image {
        // A running sandbox's mount points are in its own mount namespace only.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&disk_dir)?;
        disk::mount_existing(image, &disk_dir, spec.attached)
            .map_err(stage::context("cannot mount the sandbox's disk"))?;
    }
    let copied = copy_layers(&disk_dir, &spec);
    if spec.image.is_some() {
        // Let go of the disk before answering, whatever the copy did: a loop device this
        // stage attached (a paused sandbox's) detaches here, before anyone may attach the
        // image again.
        rustix::mount::unmount(&disk_dir, rustix::mount::UnmountFlags::empty())
            .map_err(|e| stage::context("cannot unmount the sandbox's disk")(e.into()))?;
    }
    copied
}

/// Copies the writable layers of the disk mounted at `disk_dir` as `spec` says.
fn copy_layers(disk_dir: &Path, spec: &CopySpec) -> io::Result<Vec<usize>> {
    fs::DirBuilder::new().mode(0o700).create(&spec.into)?;
    let mut copied = Vec::new();
    for i in 0..spec.points {
        let upper = init::upper_in(disk_dir, i);
        // Nothing written there: no layer needed.
        if !upper.is_dir() || fs::read_dir(&upper)?.next().is_none() {
            continue;
        }
        copy_tree(&upper, &spec.into.join(i.to_string()))?;
        copied.push(i);
    }
    Ok(copied)
}

/// Copies the directory `from` to `to` (which must not exist) as it is.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let output = Command::new("cp")
        .args([
            "-a",
            "--reflink=auto",
            "--sparse=always",
            "--no-target-directory",
        ])
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot copy the writable layer {}: {}",
            from.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
