//! Replacing a file whole: new content goes to a temporary file beside it, which takes the
//! file's place (a rename) only once it is complete. Readers see the old content or the
//! new, never a part; an upload that fails or is cut off leaves the old file as it was and
//! removes its temporary file.

use std::{
    ffi::OsStr,
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::{filesystem, filesystem::entry::METADATA_XATTR_PREFIX, users::User};

/// Temporary files are named `.cove-upload-<random>`, so watchers can leave them out.
const TEMPORARY_PREFIX: &str = ".cove-upload-";

/// Most symbolic links followed from an upload's path (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Whether `name` is one of our temporary files.
pub fn is_temporary(name: &OsStr) -> bool {
    name.to_str()
        .is_some_and(|name| name.starts_with(TEMPORARY_PREFIX))
}

/// A file being written to replace (or create) its target: `F` is the open temporary file.
/// Dropped before it is committed — an error, a cancelled request — the temporary file is
/// removed.
#[derive(Debug)]
pub struct Staged<F> {
    temporary: Temporary,
    target: PathBuf,
    file: F,
}

/// The temporary file's path, removed when dropped unless it was moved into place.
#[derive(Debug)]
struct Temporary {
    path: PathBuf,
    moved: bool,
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if self.moved {
            return;
        }
        if let Err(err) = std::fs::remove_file(&self.path) {
            tracing::warn!(?err, path = %self.path.display(), "cannot remove an unfinished upload");
        }
    }
}

impl<F> Staged<F> {
    /// The temporary file, to write the content to.
    pub fn file(&mut self) -> &mut F {
        &mut self.file
    }

    /// The temporary file's path, to set attributes on before it takes its place.
    pub fn path(&self) -> &Path {
        &self.temporary.path
    }
}

impl Staged<std::fs::File> {
    /// Starts a replacement of `path` (of the file a symbolic link there names, as a write
    /// through the link would), blocking. The new file is `user`'s, with the permission
    /// bits, ACL and extended attributes of the file it replaces (metadata set through the
    /// API aside), or 0644 less the umask when there is none.
    pub fn create_blocking(path: &Path, user: &User) -> io::Result<Self> {
        let target = follow_links(path)?;
        let dir = target.parent().unwrap_or(Path::new("/"));
        let existing = std::fs::metadata(&target).ok();
        let (path, file) = loop {
            let candidate = dir.join(format!(
                "{TEMPORARY_PREFIX}{}",
                uuid::Uuid::new_v4().simple()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&candidate)
            {
                Ok(file) => break (candidate, file),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        };
        let staged = Self {
            temporary: Temporary { path, moved: false },
            target,
            file,
        };
        filesystem::fchown(&staged.file, user)?;
        if let Some(existing) = existing {
            let mode = existing.mode() & 0o777;
            staged
                .file
                .set_permissions(std::fs::Permissions::from_mode(mode))?;
            carry_over_attributes(&staged.target, staged.path());
        }
        Ok(staged)
    }

    /// Moves the finished file into place, blocking.
    pub fn commit_blocking(mut self) -> io::Result<()> {
        std::fs::rename(&self.temporary.path, &self.target)?;
        self.temporary.moved = true;
        let touched = self
            .file
            .metadata()
            .and_then(|meta| self.file.set_len(meta.len()));
        self.report_untouched(touched);
        Ok(())
    }
}

impl<F> Staged<F> {
    /// A rename reports the file as created, not written. Watchers of the directory (the
    /// E2B SDKs' `watch_dir` users wait for a write) get their modify event from a
    /// truncation to the size it already has, which changes nothing else; `touched` is how
    /// that went.
    fn report_untouched(&self, touched: io::Result<()>) {
        if let Err(err) = touched {
            tracing::debug!(?err, path = %self.target.display(), "no modify event for an upload");
        }
    }
}

/// The path a write to `path` lands on: symbolic links at its end followed, also
/// dangling ones (a write creates the file they name).
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&current)?;
                current = match current.parent() {
                    Some(parent) => parent.join(link),
                    None => link,
                };
            }
            _ => return Ok(current),
        }
    }
    Err(rustix::io::Errno::LOOP.into())
}

/// Copies the ACL and the user's own extended attributes of `from` to `to`, as a write in
/// place would have kept them. Metadata set through the API is left behind: an upload
/// replaces it. Best effort: a filesystem without them has nothing to copy.
fn carry_over_attributes(from: &Path, to: &Path) {
    let Ok(names) = xattr::list(from) else {
        return;
    };
    for name in names {
        let Some(text) = name.to_str() else {
            continue;
        };
        let wanted = text == "system.posix_acl_access"
            || (text.starts_with("user.") && !text.starts_with(METADATA_XATTR_PREFIX));
        if !wanted {
            continue;
        }
        let Ok(Some(value)) = xattr::get(from, &name) else {
            continue;
        };
        if let Err(err) = xattr::set(to, &name, &value) {
            tracing::debug!(?err, attribute = text, "cannot carry an attribute over");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_followed_to_the_file_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        std::os::unix::fs::symlink("file", dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("missing", dir.path().join("dangling")).unwrap();
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        assert_eq!(follow_links(&file).unwrap(), file);
        assert_eq!(follow_links(&dir.path().join("link")).unwrap(), file);
        assert_eq!(
            follow_links(&dir.path().join("dangling")).unwrap(),
            dir.path().join("missing")
        );
        assert!(follow_links(&dir.path().join("loop")).is_err());
        assert!(is_temporary(OsStr::new(".cove-upload-1234")));
        assert!(!is_temporary(OsStr::new("cove-upload-1234")));
    }
}
