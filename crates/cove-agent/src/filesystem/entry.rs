//! `EntryInfo`: what clients learn about one file, directory or symlink.

use std::{
    collections::HashMap,
    fs::{self, Metadata},
    io,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use cove_proto::{
    Timestamp,
    filesystem::{EntryInfo, FileType},
};

use crate::users::Accounts;

/// The range of times proto3's JSON mapping can write (0001-01-01 to 9999-12-31, UTC).
const FIRST_SECOND: i64 = -62_135_596_800;
const LAST_SECOND: i64 = 253_402_300_799;

/// A file's modification time as a `Timestamp` JSON clients can read: tmpfs keeps times far
/// outside years 1–9999 (`touch -d @300000000000`), which would be written as `+11476-…`, a
/// date no RFC 3339 parser (the SDKs' included) accepts. Such times are clamped to the range.
fn modified_time(seconds: i64, nanos: i64) -> Timestamp {
    let nanos = i32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0);
    match seconds {
        s if s < FIRST_SECOND => Timestamp {
            seconds: FIRST_SECOND,
            nanos: 0,
        },
        s if s > LAST_SECOND => Timestamp {
            seconds: LAST_SECOND,
            nanos: 999_999_999,
        },
        seconds => Timestamp { seconds, nanos },
    }
}

/// Extended attributes under this prefix are the user metadata of a file.
pub const METADATA_XATTR_PREFIX: &str = "user.e2b.";

/// Describes the entry at `path` without following a final symlink (its target supplies
/// the type and permission bits). `shown_path` is the path reported to the client.
pub fn entry_info(path: &Path, shown_path: &Path, accounts: &Accounts) -> io::Result<EntryInfo> {
    let meta = fs::symlink_metadata(path)?;
    let is_symlink = meta.file_type().is_symlink();
    let (kind, perm, symlink_target) = if is_symlink {
        let target = fs::metadata(path).ok();
        let kind = target
            .as_ref()
            .map(file_type)
            .unwrap_or(FileType::Unspecified);
        let perm = target
            .as_ref()
            .map(|t| t.permissions().mode() & 0o777)
            .unwrap_or(0);
        let resolved = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        (kind, perm, Some(resolved.to_string_lossy().into_owned()))
    } else {
        (file_type(&meta), meta.permissions().mode() & 0o777, None)
    };
    Ok(EntryInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".to_owned()),
        r#type: kind as i32,
        path: shown_path.to_string_lossy().into_owned(),
        size: meta.size() as i64,
        mode: perm,
        permissions: permissions_string(meta.mode()),
        owner: accounts.user_name(meta.uid()),
        group: accounts.group_name(meta.gid()),
        modified_time: Some(modified_time(meta.mtime(), meta.mtime_nsec())),
        symlink_target,
        metadata: read_metadata(path),
        is_symlink,
    })
}

fn file_type(meta: &Metadata) -> FileType {
    let ft = meta.file_type();
    if ft.is_file() {
        FileType::File
    } else if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::Unspecified
    }
}

/// The `user.e2b.*` extended attributes of the file (following symlinks).
pub fn read_metadata(path: &Path) -> HashMap<String, String> {
    let Ok(names) = xattr::list_deref(path) else {
        return HashMap::new();
    };
    names
        .filter_map(|name| {
            let key = name
                .to_str()?
                .strip_prefix(METADATA_XATTR_PREFIX)?
                .to_owned();
            let value = xattr::get_deref(path, &name).ok()??;
            Some((key, String::from_utf8(value).ok()?))
        })
        .collect()
}

/// `ls -l`-style permissions the way Go prints a `FileMode`: type and special-bit letters
/// (from "dalTLDpSugct") first, or `-`, then `rwxrwxrwx`.
pub fn permissions_string(mode: u32) -> String {
    let kind = mode & libc_mode::S_IFMT;
    let mut out = String::with_capacity(12);
    let flags = [
        ('d', kind == libc_mode::S_IFDIR),
        ('L', kind == libc_mode::S_IFLNK),
        (
            'D',
            kind == libc_mode::S_IFBLK || kind == libc_mode::S_IFCHR,
        ),
        ('p', kind == libc_mode::S_IFIFO),
        ('S', kind == libc_mode::S_IFSOCK),
        ('u', mode & 0o4000 != 0),
        ('g', mode & 0o2000 != 0),
        ('c', kind == libc_mode::S_IFCHR),
        ('t', mode & 0o1000 != 0),
    ];
    for (letter, set) in flags {
        if set {
            out.push(letter);
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    for (i, letter) in "rwxrwxrwx".chars().enumerate() {
        out.push(if mode & (1 << (8 - i)) != 0 {
            letter
        } else {
            '-'
        });
    }
    out
}

/// File type bits of `st_mode` (fixed by the Linux ABI).
mod libc_mode {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `connect_proto` fuzz target: a timestamp past year 9999 encodes to JSON
    /// that does not decode again; files on tmpfs can carry such times.
    #[test]
    fn times_outside_years_1_to_9999_are_clamped() {
        use cove_proto::connect::Codec;
        for (seconds, expected) in [
            (300_000_000_000, LAST_SECOND),
            (-70_000_000_000, FIRST_SECOND),
            (1_700_000_000, 1_700_000_000),
        ] {
            let time = modified_time(seconds, 5);
            assert_eq!(time.seconds, expected);
            let entry = EntryInfo {
                modified_time: Some(time),
                ..Default::default()
            };
            let json = Codec::Json.encode(&entry);
            let back: EntryInfo = Codec::Json.decode(&json).unwrap();
            assert_eq!(back, entry, "{}", String::from_utf8_lossy(&json));
        }
    }

    #[test]
    fn permissions_read_like_go() {
        assert_eq!(permissions_string(0o100644), "-rw-r--r--");
        assert_eq!(permissions_string(0o040755), "drwxr-xr-x");
        assert_eq!(permissions_string(0o120777), "Lrwxrwxrwx");
        assert_eq!(permissions_string(0o041777), "dtrwxrwxrwx");
        assert_eq!(permissions_string(0o104755), "urwxr-xr-x");
        assert_eq!(permissions_string(0o020666), "Dcrw-rw-rw-");
        assert_eq!(permissions_string(0o010644), "prw-r--r--");
    }

    #[test]
    fn describes_files_dirs_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.txt");
        fs::write(&file, "hello").unwrap();
        std::os::unix::fs::symlink(&file, dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("missing"), dir.path().join("broken")).unwrap();
        let accounts = Accounts::default();

        let info = entry_info(&file, &file, &accounts).unwrap();
        assert_eq!(
            (info.r#type, info.size, info.is_symlink),
            (FileType::File as i32, 5, false)
        );
        assert_eq!(info.name, "f.txt");

        let link = entry_info(
            &dir.path().join("link"),
            &dir.path().join("link"),
            &accounts,
        )
        .unwrap();
        assert!(link.is_symlink);
        assert_eq!(link.r#type, FileType::File as i32);
        assert_eq!(
            link.symlink_target.as_deref(),
            Some(fs::canonicalize(&file).unwrap().to_str().unwrap())
        );

        let broken = entry_info(
            &dir.path().join("broken"),
            &dir.path().join("broken"),
            &accounts,
        )
        .unwrap();
        assert_eq!(
            (broken.r#type, broken.mode),
            (FileType::Unspecified as i32, 0)
        );
    }
}
