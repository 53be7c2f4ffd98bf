//! Freezing a sandbox's writable layers into read-only template layers (what a template build
//! keeps of each step, and a snapshot).
//!
//! A sandbox's writable layers (its overlays' upper directories) live on its own disk, which
//! is mounted only inside the sandbox's mount namespace. The copy therefore runs on a thread
//! of its own that unshares its mount namespace (a thread's mounts are its own: nothing it
//! mounts is seen by the host or outlives it) and mounts the disk there: the loop device of a
//! running sandbox (a second mount of one block device shares its filesystem), or the image
//! of one whose processes are gone.
//!
//! Only a sandbox whose processes are gone is copied (killed, not yet removed): nothing in it
//! can change the tree while the host walks it, so no entry can turn into a link to the
//! host's files between the look and the copy.
//!
//! The copy keeps what overlayfs needs to read it as a lower layer — modes (setuid too),
//! whiteouts (character devices 0/0), opaque directories (`trusted.overlay.opaque`), hard
//! links, symbolic links, modification times, user xattrs — and stores owners as the sandbox
//! sees them: on this backend the writable layer holds host ids (`base + N`), the store holds
//! `N`, as image layers do. File capabilities written inside the sandbox name its root
//! (`base`) and become plain (version 2) capabilities of whoever is root where the layer is
//! shown.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs, io,
    os::unix::{
        ffi::OsStrExt,
        fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, FileType, Mode, Timestamps, XattrFlags};

use super::{NamespaceRuntime, init::SandboxDirs};
use crate::{Handle, Layer, RuntimeError, Template, userns};

/// The overlayfs xattr that hides a lower directory's content.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// File capabilities.
const CAPABILITY_XATTR: &str = "security.capability";
/// Ids outside the sandbox's range (none should be there) are stored as `nobody`.
const OVERFLOW_ID: u32 = 65534;
/// How long a killed sandbox's disk may take to be released.
const DETACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl NamespaceRuntime {
    /// See [`crate::Runtime::snapshot`].
    pub(super) fn snapshot_sandbox(
        &self,
        handle: &Handle,
        template: &Template,
        into: &Path,
    ) -> Result<Template, RuntimeError> {
        let state = self.state(handle)?;
        let alive = crate::process::is_alive(state.pid, state.start_time)
            .map_err(RuntimeError::io("look at the sandbox's PID 1"))?;
        if alive {
            return Err(RuntimeError::Io {
                what: "freeze the files of a sandbox that still runs (kill it first)",
                source: io::Error::from(io::ErrorKind::ResourceBusy),
            });
        }
        let dirs = self.dirs(&handle.id);
        let points = template.mount_points();
        let job = Job {
            dirs,
            image: self.disks.is_some(),
            points: points.len(),
            into: into.to_owned(),
            base: userns::base_for_slot(state.slot),
        };
        let copied = std::thread::Builder::new()
            .name("cove-freeze".into())
            .spawn(move || job.run())
            .map_err(RuntimeError::io("start the layer copy"))?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the layer copy panicked")))
            .map_err(|source| {
                let _ = fs::remove_dir_all(into);
                RuntimeError::Io {
                    what: "copy the sandbox's writable layer",
                    source,
                }
            })?;
        let mut layers: Vec<Layer> = copied
            .into_iter()
            .map(|i| Layer {
                path: into.join(i.to_string()),
                at: points[i].clone(),
            })
            .collect();
        layers.extend(template.layers.iter().cloned());
        Ok(Template {
            name: template.name.clone(),
            layers,
        })
    }
}

/// One copy, run on its own thread.
struct Job {
    dirs: SandboxDirs,
    /// The writable layers are on the sandbox's disk image (else in `<dir>/disk` on the host).
    image: bool,
    points: usize,
    into: PathBuf,
    /// The host id that is root in the sandbox.
    base: u32,
}

impl Job {
    fn run(self) -> io::Result<Vec<usize>> {
        let disk = if self.image {
            // SAFETY: this thread was spawned for the copy alone and ends with it; unsharing
            // the mount namespace (which unshares the thread's filesystem context with it)
            // touches no other thread, and the file table is not unshared.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
            crate::mounts::make_private()?;
            let mount_point = self.dirs.root.join("freeze");
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&mount_point)
                .or_else(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            let image = self.dirs.disk_image();
            // The killed sandbox's mounts go away with its last process, and its loop
            // device with them, a moment later: a fresh mount of the image waits for that.
            let deadline = std::time::Instant::now() + DETACH_TIMEOUT;
            while attached_loop_device(&image)?.is_some() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // Still attached: that device's filesystem is the sandbox's, mounted once more.
            match attached_loop_device(&image)? {
                Some(device) => rustix::mount::mount(
                    &device,
                    &mount_point,
                    "ext4",
                    rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
                    None,
                )?,
                None => crate::disk::mount_image(&image, &mount_point)?,
            }
            mount_point
        } else {
            self.dirs.disk()
        };
        let copied = self.copy_points(&disk);
        if self.image {
            let _ = rustix::mount::unmount(&disk, rustix::mount::UnmountFlags::DETACH);
            let _ = fs::remove_dir(&disk);
        }
        copied
    }

    fn copy_points(&self, disk: &Path) -> io::Result<Vec<usize>> {
        fs::DirBuilder::new().mode(0o700).create(&self.into)?;
        let mut copied = Vec::new();
        for i in 0..self.points {
            let upper = disk.join("upper").join(i.to_string());
            // Nothing written there: no layer needed.
            if !upper.is_dir() || fs::read_dir(&upper)?.next().is_none() {
                continue;
            }
            let base = self.base;
            copy_tree(&upper, &self.into.join(i.to_string()), &|id| {
                shift_id(id, base)
            })?;
            copied.push(i);
        }
        Ok(copied)
    }
}

/// The id a host id `id` of the sandbox whose root is `base` stands for inside it.
fn shift_id(id: u32, base: u32) -> u32 {
    match id.checked_sub(base) {
        Some(inside) if inside < userns::RANGE_SIZE => inside,
        // Whiteouts are made by overlayfs as its mounter, host root: root's in the layer.
        _ if id == 0 => 0,
        _ => OVERFLOW_ID,
    }
}

/// The loop device `image` is attached to, if any (`/sys/block/loopN/loop/backing_file`).
fn attached_loop_device(image: &Path) -> io::Result<Option<PathBuf>> {
    let image = fs::canonicalize(image)?;
    for entry in fs::read_dir("/sys/block")? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.as_bytes().starts_with(b"loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(backing.trim_end_matches('\n')) == image {
            return Ok(Some(Path::new("/dev").join(name)));
        }
    }
    Ok(None)
}

/// Copies the directory tree `from` to `to` (which must not exist), owners mapped through
/// `map`.
fn copy_tree(from: &Path, to: &Path, map: &dyn Fn(u32) -> u32) -> io::Result<()> {
    let mut copier = Copier {
        map,
        links: HashMap::new(),
    };
    copier.dir(from, to)
}

struct Copier<'a> {
    map: &'a dyn Fn(u32) -> u32,
    /// Files with several links, by (device, inode): where their first copy went.
    links: HashMap<(u64, u64), PathBuf>,
}

impl Copier<'_> {
    fn dir(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(from)?;
        fs::DirBuilder::new().mode(0o700).create(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            self.entry(&entry.path(), &to.join(entry.file_name()))?;
        }
        self.finish(from, to, &meta)
    }

    fn entry(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(from)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            return self.dir(from, to);
        }
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key) {
                return fs::hard_link(first, to);
            }
            self.links.insert(key, to.to_owned());
        }
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
        } else if kind.is_file() {
            let mut source = fs::File::open(from)?;
            let mut target = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(to)?;
            io::copy(&mut source, &mut target)?;
        } else if kind.is_char_device() && meta.rdev() == 0 {
            // A whiteout.
            rustix::fs::mknodat(
                rustix::fs::CWD,
                to,
                FileType::CharacterDevice,
                Mode::from_raw_mode(0),
                0,
            )?;
        } else if kind.is_fifo() {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                to,
                FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            )?;
        } else {
            // Sockets and device nodes are no part of a layer (nothing inside a sandbox can
            // make a device node anyway).
            tracing::debug!(path = %from.display(), "left out of the layer");
            return Ok(());
        }
        self.finish(from, to, &meta)
    }

    /// Owner, mode, xattrs and times of the copy `to` of `from`.
    fn finish(&self, from: &Path, to: &Path, meta: &fs::Metadata) -> io::Result<()> {
        let (uid, gid) = ((self.map)(meta.uid()), (self.map)(meta.gid()));
        std::os::unix::fs::lchown(to, Some(uid), Some(gid))?;
        let symlink = meta.file_type().is_symlink();
        if !symlink {
            copy_xattrs(from, to)?;
            // After the owner: chown clears setuid and setgid bits.
            fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
        let times = Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec() as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec() as _,
            },
        };
        rustix::fs::utimensat(rustix::fs::CWD, to, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }
}

/// The xattrs a layer keeps: opaque markers, user xattrs and file capabilities.
fn copy_xattrs(from: &Path, to: &Path) -> io::Result<()> {
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::llistxattr(from, &mut names) {
        Ok(len) => len,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(rustix::io::Errno::RANGE) => {
            names = vec![0u8; 65536];
            rustix::fs::llistxattr(from, &mut names)?
        }
        Err(err) => return Err(err.into()),
    };
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let keep = name == OsStr::new(OPAQUE_XATTR)
            || name == OsStr::new(CAPABILITY_XATTR)
            || name.as_bytes().starts_with(b"user.");
        if !keep {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(from, name, &mut value)?;
        value.truncate(len);
        if name == OsStr::new(CAPABILITY_XATTR) {
            match plain_capability(&value) {
                Some(plain) => value = plain,
                None => continue,
            }
        }
        rustix::fs::lsetxattr(to, name, &value, XattrFlags::empty())?;
    }
    Ok(())
}

const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;

/// A file capability as a version 2 one (no owner): a version 3 capability made inside the
/// sandbox names its root's host id, which means nothing where the layer is shown next.
/// `None` for one that is neither.
fn plain_capability(value: &[u8]) -> Option<Vec<u8>> {
    let magic = u32::from_le_bytes(value.get(0..4)?.try_into().ok()?);
    match magic & VFS_CAP_REVISION_MASK {
        VFS_CAP_REVISION_2 if value.len() == 20 => Some(value.to_vec()),
        VFS_CAP_REVISION_3 if value.len() == 24 => {
            let mut plain = value[..20].to_vec();
            let magic = (magic & !VFS_CAP_REVISION_MASK) | VFS_CAP_REVISION_2;
            plain[0..4].copy_from_slice(&magic.to_le_bytes());
            Some(plain)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_of_the_range_become_the_sandbox_ids() {
        let base = userns::base_for_slot(3);
        assert_eq!(shift_id(base, base), 0);
        assert_eq!(shift_id(base + 1000, base), 1000);
        assert_eq!(shift_id(0, base), 0);
        assert_eq!(shift_id(base + userns::RANGE_SIZE, base), OVERFLOW_ID);
        assert_eq!(shift_id(5, base), OVERFLOW_ID);
    }

    #[test]
    fn copies_keep_what_overlayfs_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        let base = userns::base_for_slot(1);
        fs::create_dir_all(from.join("etc/opaque")).unwrap();
        xattr_set(&from.join("etc/opaque"), OPAQUE_XATTR, b"y");
        fs::write(from.join("etc/file"), b"data").unwrap();
        std::os::unix::fs::lchown(from.join("etc/file"), Some(base + 1000), Some(base + 1000))
            .unwrap();
        fs::set_permissions(from.join("etc/file"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(from.join("etc/file"), from.join("etc/link")).unwrap();
        std::os::unix::fs::symlink("file", from.join("etc/sym")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            from.join("etc/gone"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0),
            0,
        )
        .unwrap();
        copy_tree(&from, &to, &|id| shift_id(id, base)).unwrap();

        let file = fs::metadata(to.join("etc/file")).unwrap();
        assert_eq!((file.uid(), file.gid()), (1000, 1000));
        assert_eq!(file.mode() & 0o7777, 0o4755, "setuid survives the chown");
        assert_eq!(fs::read(to.join("etc/file")).unwrap(), b"data");
        assert_eq!(
            fs::metadata(to.join("etc/link")).unwrap().ino(),
            file.ino(),
            "hard links stay links"
        );
        assert_eq!(
            fs::read_link(to.join("etc/sym")).unwrap(),
            PathBuf::from("file")
        );
        let gone = fs::symlink_metadata(to.join("etc/gone")).unwrap();
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        let mut opaque = [0u8; 8];
        let len = rustix::fs::lgetxattr(to.join("etc/opaque"), OPAQUE_XATTR, &mut opaque).unwrap();
        assert_eq!(&opaque[..len], b"y");
        // Host root's own entries (the directories made here) are root's.
        assert_eq!(fs::metadata(to.join("etc")).unwrap().uid(), 0);
    }

    #[test]
    fn namespaced_capabilities_become_plain_ones() {
        let mut v3 = Vec::new();
        v3.extend_from_slice(&(VFS_CAP_REVISION_3 | 1).to_le_bytes());
        v3.extend_from_slice(&[0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        v3.extend_from_slice(&userns::base_for_slot(2).to_le_bytes());
        let plain = plain_capability(&v3).unwrap();
        assert_eq!(plain.len(), 20);
        assert_eq!(
            u32::from_le_bytes(plain[0..4].try_into().unwrap()),
            VFS_CAP_REVISION_2 | 1
        );
        assert_eq!(plain_capability(b"junk"), None);
    }

    fn xattr_set(path: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()).unwrap();
    }
}
