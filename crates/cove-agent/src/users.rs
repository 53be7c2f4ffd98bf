//! Accounts of the sandbox, read from its `/etc/passwd` and `/etc/group`.
//!
//! The agent runs in template root filesystems of any libc, so it parses the files itself
//! instead of going through NSS.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// One account of `/etc/passwd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} does not exist in the sandbox")]
    Unknown(String),
    #[error("cannot read the account database {path}")]
    Database {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the account files live (the sandbox's root, or a test's fixture).
#[derive(Clone, Debug)]
pub struct AccountFiles {
    passwd: PathBuf,
    group: PathBuf,
}

impl Default for AccountFiles {
    fn default() -> Self {
        Self::under(Path::new("/"))
    }
}

impl AccountFiles {
    /// The account files of the filesystem rooted at `root`.
    pub fn under(root: &Path) -> Self {
        Self {
            passwd: root.join("etc/passwd"),
            group: root.join("etc/group"),
        }
    }

    /// Reads both files once; use the snapshot for a whole request.
    pub fn load(&self) -> Result<Accounts, UserError> {
        let read = |path: &Path| {
            fs::read_to_string(path).map_err(|source| UserError::Database {
                path: path.to_owned(),
                source,
            })
        };
        let passwd = read(&self.passwd)?;
        // A missing group file only costs us group names.
        let group = read(&self.group).unwrap_or_default();
        Ok(Accounts {
            users: passwd.lines().filter_map(parse_passwd_line).collect(),
            groups: group.lines().filter_map(parse_group_line).collect(),
        })
    }

    /// Looks one user up by name.
    pub fn user(&self, name: &str) -> Result<User, UserError> {
        self.load()?.user(name)
    }
}

/// A snapshot of the account database.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    users: Vec<User>,
    groups: Vec<(String, u32)>,
}

impl Accounts {
    pub fn user(&self, name: &str) -> Result<User, UserError> {
        self.users
            .iter()
            .find(|u| u.name == name)
            .cloned()
            .ok_or_else(|| UserError::Unknown(name.to_owned()))
    }

    /// The name of a uid, or the number itself when no account has it.
    pub fn user_name(&self, uid: u32) -> String {
        self.users
            .iter()
            .find(|u| u.uid == uid)
            .map(|u| u.name.clone())
            .unwrap_or_else(|| uid.to_string())
    }

    /// The name of a gid, or the number itself when no group has it.
    pub fn group_name(&self, gid: u32) -> String {
        self.groups
            .iter()
            .find(|(_, g)| *g == gid)
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| gid.to_string())
    }
}

fn parse_passwd_line(line: &str) -> Option<User> {
    if line.starts_with('#') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 {
        return None;
    }
    Some(User {
        name: fields[0].to_owned(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: PathBuf::from(fields[5]),
        shell: fields[6].to_owned(),
    })
}

fn parse_group_line(line: &str) -> Option<(String, u32)> {
    if line.starts_with('#') {
        return None;
    }
    let mut fields = line.split(':');
    let name = fields.next()?;
    let gid = fields.nth(1)?.parse().ok()?;
    Some((name.to_owned(), gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_accounts() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\nuser:x:1000:1000::/home/user:/bin/bash\n",
        )
        .unwrap();
        fs::write(dir.path().join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        let accounts = AccountFiles::under(dir.path()).load().unwrap();
        let user = accounts.user("user").unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.home, PathBuf::from("/home/user"));
        assert_eq!(accounts.user_name(0), "root");
        assert_eq!(accounts.group_name(1000), "user");
        assert_eq!(accounts.group_name(4242), "4242");
        assert!(matches!(
            accounts.user("nobody"),
            Err(UserError::Unknown(_))
        ));
    }
}
