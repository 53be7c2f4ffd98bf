//! How paths from clients become absolute paths in the sandbox: empty means the default
//! working directory, `~` is the user's home, and relative paths start at the home.

use std::path::{Component, Path, PathBuf};

use crate::users::User;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("cannot expand {0:?}: only ~ and ~/… (the calling user's home) are supported")]
    OtherUsersHome(String),
}

/// Resolves a client path for `user`. An empty path becomes `default` (when given) or the
/// user's home.
pub fn resolve(path: &str, user: &User, default: Option<&Path>) -> Result<PathBuf, PathError> {
    let path = if path.is_empty() {
        match default {
            Some(default) => return Ok(clean(default)),
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
    Ok(clean(&user.home.join(expanded)))
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
}
