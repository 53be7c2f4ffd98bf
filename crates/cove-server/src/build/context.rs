//! Build contexts: the archives of files COPY steps take, uploaded by clients before the
//! build (`GET /templates/{id}/files/{hash}` answers where to `PUT` them) and kept per team
//! by their hash.
//!
//! The upload URL carries its own credential, as E2B's presigned storage URLs do: an HMAC
//! (with a key only this server has) of the template, the hash and an expiry time. The
//! archive is written beside its final place and renamed there once complete, so a cut-off
//! upload leaves nothing that looks like the files.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use futures::StreamExt;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

/// How long an upload URL works.
pub const UPLOAD_URL_SECS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot use the build context directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the upload is larger than {0} MiB")]
    TooLarge(u64),
    #[error("the upload was cut off: {0}")]
    Body(String),
}

/// Where contexts are kept, and the key of upload URLs.
#[derive(Clone)]
pub struct Contexts {
    dir: PathBuf,
    key: [u8; 32],
    max_bytes: u64,
}

impl std::fmt::Debug for Contexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contexts")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Contexts {
    /// Contexts under `dir` (host root's alone), each at most `max_bytes`; the URL key is
    /// made on first use and kept there.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, ContextError> {
        let io_err = |source| ContextError::Io {
            path: dir.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err)?;
        let key_path = dir.join("upload.key");
        let key = match fs::read(&key_path) {
            Ok(key) if key.len() == 32 => key,
            _ => {
                let key = crate::secrets::random_token();
                let key = hex::decode(key).map_err(|e| io_err(io::Error::other(e)))?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&key_path)
                    .map_err(io_err)?;
                io::Write::write_all(&mut file, &key).map_err(io_err)?;
                key
            }
        };
        let mut fixed = [0u8; 32];
        fixed.copy_from_slice(&key);
        Ok(Self {
            dir: dir.to_owned(),
            key: fixed,
            max_bytes,
        })
    }

    /// The signature of an upload of `hash` for `template` until `expires` (unix seconds).
    fn signature(&self, template: &str, hash: &str, expires: i64) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any size");
        mac.update(format!("{template}\0{hash}\0{expires}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The query of an upload URL for `hash` of `template`, valid from now on.
    pub fn upload_query(&self, template: &str, hash: &str) -> String {
        let expires = crate::clock::now_ms() / 1000 + UPLOAD_URL_SECS;
        format!(
            "expires={expires}&signature={}",
            self.signature(template, hash, expires)
        )
    }

    /// Whether an upload URL's `expires` and `signature` are this server's, for `hash` of
    /// `template`, and not expired.
    pub fn check(&self, template: &str, hash: &str, expires: i64, signature: &str) -> bool {
        expires >= crate::clock::now_ms() / 1000
            && cove_proto::signing::constant_time_eq(
                self.signature(template, hash, expires).as_bytes(),
                signature.as_bytes(),
            )
    }

    fn team_dir(&self, team: &str) -> PathBuf {
        // A team name may be anything: its digest names the directory.
        self.dir
            .join(&hex::encode(Sha256::digest(team.as_bytes()))[..24])
    }

    /// Where `team`'s context `hash` is (it may be missing).
    pub fn path(&self, team: &str, hash: &str) -> PathBuf {
        self.team_dir(team).join(hash)
    }

    /// Whether `team`'s context `hash` is there.
    pub fn has(&self, team: &str, hash: &str) -> bool {
        self.path(team, hash).is_file()
    }

    /// Stores the body of an upload as `team`'s context `hash`; returns its size.
    pub async fn store(
        &self,
        team: &str,
        hash: &str,
        body: axum::body::Body,
    ) -> Result<u64, ContextError> {
        let dir = self.team_dir(team);
        let io_err = |source| ContextError::Io {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err)?;
        let partial = dir.join(format!(".{hash}.{}", crate::secrets::random_id(8)));
        let written = self.write(&partial, body).await;
        match written {
            Ok(size) => {
                fs::rename(&partial, dir.join(hash)).map_err(io_err)?;
                Ok(size)
            }
            Err(err) => {
                let _ = fs::remove_file(&partial);
                Err(err)
            }
        }
    }

    async fn write(&self, path: &Path, body: axum::body::Body) -> Result<u64, ContextError> {
        let io_err = |source| ContextError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .await
            .map_err(io_err)?;
        let mut stream = body.into_data_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ContextError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > self.max_bytes {
                return Err(ContextError::TooLarge(self.max_bytes >> 20));
            }
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        file.sync_all().await.map_err(io_err)?;
        Ok(size)
    }

    /// Deletes `team`'s context `hash`.
    pub fn remove(&self, team: &str, hash: &str) {
        let _ = fs::remove_file(self.path(team, hash));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_urls_are_bound_to_template_hash_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let contexts = Contexts::open(dir.path(), 1 << 20).unwrap();
        let query = contexts.upload_query("tpl", "abc");
        let (expires, signature) = query
            .strip_prefix("expires=")
            .and_then(|q| q.split_once("&signature="))
            .unwrap();
        let expires: i64 = expires.parse().unwrap();
        assert!(contexts.check("tpl", "abc", expires, signature));
        assert!(!contexts.check("tpl", "abd", expires, signature));
        assert!(!contexts.check("other", "abc", expires, signature));
        assert!(!contexts.check("tpl", "abc", expires + 1, signature));
        assert!(!contexts.check("tpl", "abc", 1, &contexts.signature("tpl", "abc", 1)));
        // The key survives a restart: URLs handed out stay good.
        let again = Contexts::open(dir.path(), 1 << 20).unwrap();
        assert!(again.check("tpl", "abc", expires, signature));
    }
}
