//! The sandbox-wide settings `/init` can change: environment, default user and working
//! directory, access token.

use std::{collections::BTreeMap, path::PathBuf, sync::RwLock};

/// Mutable defaults applied to every call that does not override them.
#[derive(Debug)]
pub struct Defaults(RwLock<Values>);

#[derive(Clone, Debug)]
struct Values {
    user: String,
    workdir: Option<PathBuf>,
    env: BTreeMap<String, String>,
    access_token: Option<String>,
}

impl Defaults {
    pub fn new(user: String, workdir: Option<PathBuf>, access_token: Option<String>) -> Self {
        Self(RwLock::new(Values {
            user,
            workdir,
            env: BTreeMap::new(),
            access_token,
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Values> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Values> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn user(&self) -> String {
        self.read().user.clone()
    }

    pub fn workdir(&self) -> Option<PathBuf> {
        self.read().workdir.clone()
    }

    /// Environment variables every process gets (before its own).
    pub fn env(&self) -> BTreeMap<String, String> {
        self.read().env.clone()
    }

    pub fn access_token(&self) -> Option<String> {
        self.read().access_token.clone()
    }

    pub fn set_user(&self, user: String) {
        self.write().user = user;
    }

    pub fn set_workdir(&self, workdir: PathBuf) {
        self.write().workdir = Some(workdir);
    }

    /// Adds to (and overrides within) the sandbox environment.
    pub fn extend_env(&self, vars: impl IntoIterator<Item = (String, String)>) {
        self.write().env.extend(vars);
    }

    pub fn set_access_token(&self, token: Option<String>) {
        self.write().access_token = token.filter(|t| !t.is_empty());
    }
}
