//! A stored layer as an archive and back: how a layer made on one machine (a template
//! build's steps, its accounts layer) reaches another (the nodes of a cluster share layers
//! through object storage).
//!
//! The archive is an OCI layer, gzip'd: overlayfs's whiteouts (character devices 0:0) become
//! `.wh.NAME` files and opaque directories a `.wh..wh..opq` entry, the xattrs the unpacker keeps
//! travel as PAX records, hard links stay links. Importing it is an unpack like any other
//! (the same checks, the same refusals), except that the layer keeps the id it had where it
//! was made: what is verified is the archive's digest and size, which the exporter reported.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    io::{self, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{FileTypeExt, MetadataExt},
    },
    path::{Path, PathBuf},
};

use bytes::Bytes;
use futures::Stream;

use super::{Expected, LayerInfo, LayerStore, StoreError, io_err};
use crate::{
    digest::{Digest, HashingWriter},
    unpack::OPAQUE_XATTR,
};

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exported {
    /// The digest and length of the archive as written (gzip'd).
    pub digest: Digest,
    pub size: u64,
    /// Entries written (whiteouts and opaque markers included).
    pub entries: u64,
}

impl LayerStore {
    /// Writes layer `id` to `out` as a gzip'd OCI layer archive. The layer must not be
    /// collected meanwhile: the caller retains it.
    pub fn export_layer(&self, id: &Digest, out: impl Write) -> Result<Exported, StoreError> {
        if !self.contains(id) {
            return Err(StoreError::UnknownLayer(id.clone()));
        }
        let root = self.layer_path(id);
        export_tree(&root, out).map_err(|source| io_err("archive", &root, source))
    }

    /// Stores layer `id` from an archive [`LayerStore::export_layer`] wrote elsewhere, fed by
    /// a download: its digest and size must be `archive`'s, else nothing is kept. An already
    /// stored layer is only retained for `owner`.
    pub async fn import_layer<S, E>(
        &self,
        id: &Digest,
        archive: &Exported,
        chunks: S,
        owner: &str,
    ) -> Result<(LayerInfo, bool), StoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        if let Some(new) = self.retain_if_present(id, owner)? {
            let mut info = self
                .layer(id)?
                .ok_or(StoreError::UnknownLayer(id.clone()))?;
            info.owners = self.owners(id)?;
            return Ok((info, new));
        }
        let expected = Expected {
            diff_id: id.clone(),
            blob: Some((archive.digest.clone(), Some(archive.size))),
            named_by_content: false,
        };
        self.install_stream(expected, chunks, owner, |_| {}).await
    }
}

/// Writes the tree under `root` (a layer's, or any directory in the same form: overlayfs
/// whiteouts and opaque directories, owners as stored) to `out` as a gzip'd OCI layer
/// archive, which [`unpack`](crate::unpack) reads back.
pub fn export_tree(root: &Path, out: impl Write) -> io::Result<Exported> {
    let hashed = HashingWriter::new(out);
    let gz = flate2::write::GzEncoder::new(hashed, flate2::Compression::fast());
    let mut archive = Archive {
        tar: tar::Builder::new(gz),
        links: HashMap::new(),
        entries: 0,
    };
    archive.tar.mode(tar::HeaderMode::Complete);
    archive.tar.follow_symlinks(false);
    archive.directory(root, Path::new(""))?;
    let entries = archive.entries;
    let written = archive.tar.into_inner().and_then(|gz| gz.finish())?;
    let (digest, size) = written.finish();
    Ok(Exported {
        digest,
        size,
        entries,
    })
}

struct Archive<W: Write> {
    tar: tar::Builder<W>,
    /// Files with several links, by inode: the path written first.
    links: HashMap<(u64, u64), PathBuf>,
    entries: u64,
}

impl<W: Write> Archive<W> {
    /// Writes the entries below `dir` (`rel` in the archive), sorted by name so the same tree
    /// gives the same archive.
    fn directory(&mut self, dir: &Path, rel: &Path) -> io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        if is_opaque(dir)? {
            self.marker(&rel.join(".wh..wh..opq"))?;
        }
        for name in names {
            let path = dir.join(&name);
            let rel = rel.join(&name);
            let meta = fs::symlink_metadata(&path)?;
            let kind = meta.file_type();
            if kind.is_char_device() && meta.rdev() == 0 {
                let mut marker = OsStr::new(".wh.").to_owned();
                marker.push(&name);
                self.marker(&rel.with_file_name(marker))?;
            } else if kind.is_dir() {
                let mut header = self.header(&meta, &path, tar::EntryType::Directory)?;
                self.tar.append_data(&mut header, &rel, io::empty())?;
                self.entries += 1;
                self.directory(&path, &rel)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&path)?;
                let mut header = self.header(&meta, &path, tar::EntryType::Symlink)?;
                self.tar.append_link(&mut header, &rel, &target)?;
                self.entries += 1;
            } else if kind.is_file() {
                let first = (meta.nlink() > 1)
                    .then(|| self.links.get(&(meta.dev(), meta.ino())).cloned())
                    .flatten();
                if let Some(first) = first {
                    let mut header = self.header(&meta, &path, tar::EntryType::Link)?;
                    header.set_size(0);
                    self.tar.append_link(&mut header, &rel, &first)?;
                } else {
                    if meta.nlink() > 1 {
                        self.links.insert((meta.dev(), meta.ino()), rel.clone());
                    }
                    let mut header = self.header(&meta, &path, tar::EntryType::Regular)?;
                    let file = fs::File::open(&path)?;
                    self.tar.append_data(&mut header, &rel, file)?;
                }
                self.entries += 1;
            } else {
                // Device nodes, fifos, sockets: the unpacker never makes them.
                tracing::debug!(path = %path.display(), "not archived: a special file");
            }
        }
        Ok(())
    }

    /// An empty marker file (a whiteout, an opaque directory's).
    fn marker(&mut self, rel: &Path) -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        self.tar.append_data(&mut header, rel, io::empty())?;
        self.entries += 1;
        Ok(())
    }

    /// `meta`'s header, after the PAX records of the xattrs the unpacker keeps.
    fn header(
        &mut self,
        meta: &fs::Metadata,
        path: &Path,
        kind: tar::EntryType,
    ) -> io::Result<tar::Header> {
        let xattrs = kept_xattrs(path)?;
        if !xattrs.is_empty() {
            let records: Vec<(String, Vec<u8>)> = xattrs
                .into_iter()
                .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value))
                .collect();
            self.tar
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        header.set_entry_type(kind);
        if !kind.is_file() {
            header.set_size(0);
        }
        Ok(header)
    }
}

/// Whether overlayfs reads `dir` as opaque (nothing below it from lower layers).
fn is_opaque(dir: &Path) -> io::Result<bool> {
    let mut value = [0u8; 4];
    match rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut value[..]) {
        Ok(n) => Ok(&value[..n] == b"y"),
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::RANGE | rustix::io::Errno::NOTSUP) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// The xattrs an unpack keeps (user ones, file capabilities), with their values.
fn kept_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(size) => size,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..])?;
    let mut kept = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !crate::unpack::allowed_xattr(name) {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let size = rustix::fs::lgetxattr_query(path, name)?;
        let mut value = vec![0u8; size];
        let got = rustix::fs::lgetxattr(path, name, &mut value[..])?;
        value.truncate(got);
        kept.push((name.to_string_lossy().into_owned(), value));
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use futures::stream;

    use super::*;
    use crate::store::StoreOptions;

    /// A layer as a build makes it: files, a symlink, a hard link, a whiteout, an opaque
    /// directory, owners, modes and a kept xattr.
    fn made_layer(store: &LayerStore) -> Digest {
        let tree = store.staging_dir().expect("staging");
        fs::create_dir_all(tree.join("app/data")).unwrap();
        fs::write(tree.join("app/main.py"), b"print('hi')\n").unwrap();
        fs::hard_link(tree.join("app/main.py"), tree.join("app/again.py")).unwrap();
        symlink("main.py", tree.join("app/link")).unwrap();
        fs::write(tree.join("app/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(tree.join("app/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        rustix::fs::chown(
            tree.join("app/data"),
            Some(rustix::fs::Uid::from_raw(1000)),
            Some(rustix::fs::Gid::from_raw(1000)),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tree.join("app/gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .unwrap();
        rustix::fs::setxattr(
            tree.join("app/data"),
            OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::setxattr(
            tree.join("app/main.py"),
            "user.origin",
            b"build",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let id = Digest::of(b"a layer a build made");
        store.install_tree(&id, &tree, "build:b1").unwrap();
        id
    }

    /// Two machines' stores.
    fn two_stores() -> (tempfile::TempDir, LayerStore, LayerStore) {
        let dir = tempfile::tempdir().unwrap();
        let here = LayerStore::open(dir.path().join("here"), StoreOptions::default()).unwrap();
        let there = LayerStore::open(dir.path().join("there"), StoreOptions::default()).unwrap();
        (dir, here, there)
    }

    #[tokio::test]
    async fn a_made_layer_travels_whole_under_its_id() {
        let (_dir, here, there) = two_stores();
        let id = made_layer(&here);
        let mut archive = Vec::new();
        let exported = here.export_layer(&id, &mut archive).unwrap();
        assert_eq!(exported.size, archive.len() as u64);
        assert_eq!(exported.digest, Digest::of(&archive));
        // Twice the same: the archive depends on the tree only.
        let mut again = Vec::new();
        assert_eq!(here.export_layer(&id, &mut again).unwrap(), exported);

        let chunks = stream::iter(
            archive
                .chunks(100)
                .map(|c| Ok::<_, io::Error>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let (info, new) = there
            .import_layer(&id, &exported, chunks, "build:b1")
            .await
            .unwrap();
        assert!(new);
        assert_eq!(info.id, id);
        let root = there.layer_path(&id);
        assert_eq!(
            fs::read(root.join("app/main.py")).unwrap(),
            b"print('hi')\n"
        );
        let (a, b) = (
            fs::metadata(root.join("app/main.py")).unwrap(),
            fs::metadata(root.join("app/again.py")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "the hard link stays a link");
        assert_eq!(
            fs::read_link(root.join("app/link")).unwrap(),
            Path::new("main.py")
        );
        let tool = fs::metadata(root.join("app/tool")).unwrap();
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        let data = fs::metadata(root.join("app/data")).unwrap();
        assert_eq!((data.uid(), data.gid()), (1000, 1000));
        let gone = fs::symlink_metadata(root.join("app/gone")).unwrap();
        assert!(
            gone.file_type().is_char_device() && gone.rdev() == 0,
            "a whiteout"
        );
        assert!(is_opaque(&root.join("app/data")).unwrap());
        assert_eq!(
            kept_xattrs(&root.join("app/main.py")).unwrap(),
            vec![("user.origin".to_owned(), b"build".to_vec())]
        );
    }

    #[tokio::test]
    async fn an_archive_that_is_not_the_exported_one_is_refused_and_nothing_kept() {
        let (_dir, here, there) = two_stores();
        let id = made_layer(&here);
        let mut archive = Vec::new();
        let exported = here.export_layer(&id, &mut archive).unwrap();
        // Another valid archive in its place (a different layer): its digest differs.
        let other = crate::unpack::tests::TarWriter::default()
            .file("app/main.py", b"print('owned')\n")
            .finish();
        let chunks = stream::iter([Ok::<_, io::Error>(Bytes::from(other))]);
        let err = there
            .import_layer(&id, &exported, chunks, "build:b1")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::DigestMismatch { .. } | StoreError::TooLarge { .. }
            ),
            "{err:?}"
        );
        assert!(!there.contains(&id));
        assert_eq!(fs::read_dir(there.root().join("tmp")).unwrap().count(), 0);
    }
}
