//! How paths from clients become absolute paths in the sandbox: empty means the default
//! working directory, `~` is the user's home, and relative paths start at the home.

use std::{
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

use crate::users::User;

/// Longest absolute path the kernel takes (`PATH_MAX` less its NUL).
pub const MAX_PATH_BYTES: usize = 4095;
/// Longest name of one directory entry (`NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("cannot expand {0:?}: only ~ and ~/… (the calling user's home) are supported")]
    OtherUsersHome(String),
    #[error("invalid path {0:?}: a path cannot contain a NUL byte")]
    Nul(String),
    #[error("invalid path: it is {0} bytes long, over the limit of {MAX_PATH_BYTES}")]
    TooLong(usize),
    #[error("invalid path: the name {0:?} is over the limit of {MAX_NAME_BYTES} bytes")]
    NameTooLong(String),
}

/// Resolves a client path for `user`. An empty path becomes `default` (when given) or the
/// user's home. Paths the kernel would refuse (a NUL byte, too long) are refused here, so every
/// caller answers them as the client's mistake.
pub fn resolve(path: &str, user: &User, default: Option<&Path>) -> Result<PathBuf, PathError> {
    let path = if path.is_empty() {
        match default {
            Some(default) => return checked(clean(default)),
            None => "",
        }
    } else {
        path
    };
    let expanded = match path.strip_prefix('~') {
        None => PathBuf::from(path),
        Some("") => user.home.clone(),
        Some(rest) if rest.starts_with('/') => user.home.join(rest.trim_start_matches('/')),
        Some(_) => return Err(PathError::OtherUsersHome(path.to_owned())),
    };
    checked(clean(&user.home.join(expanded)))
}

/// The path, unless the kernel would refuse it (the NUL may also come from the user's home or
/// the default directory, which the sandbox's root can set).
fn checked(path: PathBuf) -> Result<PathBuf, PathError> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(PathError::Nul(path.to_string_lossy().into_owned()));
    }
    let len = path.as_os_str().len();
    if len > MAX_PATH_BYTES {
        return Err(PathError::TooLong(len));
    }
    match path.iter().find(|name| name.len() > MAX_NAME_BYTES) {
        Some(name) => Err(PathError::NameTooLong(name.to_string_lossy().into_owned())),
        None => Ok(path),
    }
}

/// Lexical clean-up: drops `.`, applies `..`, never climbs above `/`.
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/user".into(),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn resolves_like_envd() {
        let u = user();
        let r = |p: &str| resolve(p, &u, None).unwrap();
        assert_eq!(r("/etc/../tmp/./x"), PathBuf::from("/tmp/x"));
        assert_eq!(r("a/b"), PathBuf::from("/home/user/a/b"));
        assert_eq!(r("~"), PathBuf::from("/home/user"));
        assert_eq!(r("~/x"), PathBuf::from("/home/user/x"));
        assert_eq!(r(""), PathBuf::from("/home/user"));
        assert_eq!(r("../../../.."), PathBuf::from("/"));
        assert_eq!(
            resolve("", &u, Some(Path::new("/work"))).unwrap(),
            PathBuf::from("/work")
        );
        assert!(resolve("~root/x", &u, None).is_err());
    }

    /// These used to reach the kernel, whose refusal clients got as a 500 from `/files` and
    /// as `internal` from the filesystem RPCs (a name over 255 bytes).
    #[test]
    fn paths_the_kernel_refuses_are_the_clients_mistake() {
        let u = user();
        assert!(matches!(
            resolve("/tmp/a\0b", &u, None),
            Err(PathError::Nul(_))
        ));
        assert!(matches!(resolve("\0", &u, None), Err(PathError::Nul(_))));
        let home_with_nul = User {
            home: "/home/a\0b".into(),
            ..user()
        };
        assert!(matches!(
            resolve("x", &home_with_nul, None),
            Err(PathError::Nul(_))
        ));
        let name = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(
            resolve(&format!("/tmp/{name}"), &u, None),
            Err(PathError::NameTooLong(_))
        ));
        assert!(resolve(&format!("/tmp/{name}/.."), &u, None).is_ok());
        let long = format!("/{}", vec!["d".repeat(200); 21].join("/"));
        assert!(matches!(
            resolve(&long, &u, None),
            Err(PathError::TooLong(len)) if len == long.len()
        ));
        let fits = format!("/{}", "d/".repeat(MAX_PATH_BYTES / 2 - 1));
        assert!(resolve(&fits, &u, None).is_ok(), "{}", fits.len());
    }
}
