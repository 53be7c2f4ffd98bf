//! How the agent turns a client's path into a path in the sandbox (`cove_agent::paths`):
//! `..`, `.`, `~`, NUL bytes, very long paths and names, and (for `clean`) non-UTF-8 bytes.
//!
//! Input: the user's home on the first line (when it starts with `/`), the default working
//! directory on the second (empty: none), the path after it.
//! Properties: a resolved path is absolute and clean (no `.` or `..`, resolving it again gives
//! itself), so it never climbs above the root; a relative or `~` path without `..` stays in
//! the home; an absolute one without `..` is itself; the kernel could take it (no NUL, at most
//! PATH_MAX and NAME_MAX); refusals are for exactly those reasons.
#![no_main]

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

use cove_agent::{
    paths::{MAX_NAME_BYTES, MAX_PATH_BYTES, PathError, clean, resolve},
    users::User,
};
use libfuzzer_sys::fuzz_target;

fn assert_clean(path: &Path) {
    let mut components = path.components();
    assert_eq!(
        components.next(),
        Some(Component::RootDir),
        "{path:?} is not absolute"
    );
    assert!(
        components.all(|c| matches!(c, Component::Normal(_))),
        "{path:?} keeps . or .."
    );
    assert_eq!(clean(path), path, "cleaning {path:?} again changed it");
}

fn has_parent_dir(path: &str) -> bool {
    path.split('/').any(|part| part == "..")
}

fn check(path: &str, user: &User, default: Option<&Path>) {
    let home = clean(&user.home);
    match resolve(path, user, default) {
        Ok(resolved) => {
            assert_clean(&resolved);
            let bytes = resolved.as_os_str().as_bytes();
            assert!(!bytes.contains(&0), "{resolved:?} holds a NUL byte");
            assert!(bytes.len() <= MAX_PATH_BYTES, "{resolved:?} is too long");
            assert!(resolved.iter().all(|n| n.len() <= MAX_NAME_BYTES));
            let text = resolved.to_str().expect("a path from a str stays UTF-8");
            assert_eq!(resolve(text, user, default).as_ref(), Ok(&resolved));
            if !has_parent_dir(path) {
                if path.starts_with('/') {
                    assert_eq!(resolved, clean(Path::new(path)));
                } else if !path.is_empty() {
                    assert!(
                        resolved.starts_with(&home),
                        "{path:?} left the home: {resolved:?}"
                    );
                }
            }
            if path.is_empty() {
                assert_eq!(resolved, default.map_or(home, clean));
            }
        }
        Err(PathError::Nul(_)) => assert!(
            path.contains('\0')
                || user.home.as_os_str().as_bytes().contains(&0)
                || default.is_some_and(|d| d.as_os_str().as_bytes().contains(&0))
        ),
        Err(PathError::OtherUsersHome(_)) => {
            assert!(path.starts_with('~') && !path.starts_with("~/") && path != "~");
        }
        Err(PathError::TooLong(len)) => assert!(len > MAX_PATH_BYTES),
        Err(PathError::NameTooLong(name)) => assert!(name.len() > MAX_NAME_BYTES),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |b| *b == b'\n');
    let home = lines.next().unwrap_or_default();
    let default = lines.next().unwrap_or_default();
    let raw = lines.next().unwrap_or_default();

    let home = match std::str::from_utf8(home) {
        Ok(home) if home.starts_with('/') => PathBuf::from(home),
        _ => PathBuf::from("/home/user"),
    };
    let user = User {
        name: "user".into(),
        uid: 1000,
        gid: 1000,
        home,
        shell: "/bin/sh".into(),
    };
    let default = std::str::from_utf8(default)
        .ok()
        .filter(|d| d.starts_with('/'))
        .map(Path::new);

    // Clients send paths as JSON or query strings, so they arrive as UTF-8; bytes that are
    // not become U+FFFD as a lossy decoder would make them.
    let path = String::from_utf8_lossy(raw);
    check(&path, &user, default);

    // `clean` itself takes any bytes.
    let cleaned = clean(Path::new(OsStr::from_bytes(raw)));
    assert_clean(&cleaned);
    // Under any clean base, a path without `..` stays under it.
    if !raw.split(|b| *b == b'/').any(|part| part == b"..") {
        let base = clean(&user.home);
        let relative = &raw[raw.iter().take_while(|b| **b == b'/').count()..];
        let joined = clean(&base.join(OsStr::from_bytes(relative)));
        assert!(joined.starts_with(&base), "{joined:?} left {base:?}");
    }
});
