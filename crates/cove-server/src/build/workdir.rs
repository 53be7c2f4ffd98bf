//! `WORKDIR path`: later steps and the template's processes start there; a directory that
//! is missing is made (owned by the current user, as BuildKit does), as a layer of its own.

use std::path::{Path, PathBuf};

use super::{
    layer_tree::{LayerTree, TreeError},
    stack::{Stack, StackError},
};

#[derive(Debug, thiserror::Error)]
pub enum WorkdirError {
    #[error("{0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// The working directory `path` names when the current one is `current`.
pub fn join(current: &str, path: &str) -> String {
    let joined = Path::new(current).join(path);
    // Lexically normal, absolute.
    let mut out = PathBuf::from("/");
    for part in joined.components() {
        match part {
            std::path::Component::Normal(name) => out.push(name),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.to_string_lossy().into_owned()
}

/// Makes `path` in `tree` (over `below`) if the stack lacks it; whether anything was made.
pub fn make(
    below: &Stack,
    tree: &LayerTree<'_>,
    path: &str,
    owner: (u32, u32),
) -> Result<bool, WorkdirError> {
    let resolved = below.resolve(Path::new(path))?;
    if resolved.exists {
        return match below.lookup(&resolved.path)? {
            Some(entry) if entry.is_dir() => Ok(false),
            _ => Err(WorkdirError::NotADirectory(resolved.path)),
        };
    }
    tree.ensure_dir(&resolved.path, owner, 0o755)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_current_directory() {
        assert_eq!(join("/home/user", "app"), "/home/user/app");
        assert_eq!(join("/home/user", "/srv/../opt/x/"), "/opt/x");
        assert_eq!(join("/", "../.."), "/");
    }
}
