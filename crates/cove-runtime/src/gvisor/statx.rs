//! A working `ls` in gVisor sandboxes. Debian's runsc (2022) refuses `statx` calls that pass
//! `AT_NO_AUTOMOUNT`, as GNU coreutils always do (`ls`, `stat`, `cp -a`, … fail on every
//! file with "Invalid argument"). The sentry has no automount points, so the flag means
//! nothing there: a small library (`resources/statx_shim.c`, built by `build.rs`), preloaded
//! into every process the agent starts (`LD_PRELOAD`), makes a call refused for that flag
//! again without it, and changes nothing else.
//!
//! The library is written into the backend's directory (host root's alone) and bound
//! read-only into each sandbox at [`INSIDE`].

use std::{
    fs, io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::AgentSettings;

/// The library, as built for this host.
const LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libcove_statx.so"));

/// Where sandboxes find it.
pub const INSIDE: &str = "/run/cove-statx.so";

/// Installs run one at a time: two starts at once (a kernel image being built beside a
/// create) would otherwise each remove and rename the other's half-written copy.
static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes the library into `dir` (unless it is there already, the same) and returns its
/// path.
pub fn install(dir: &Path) -> io::Result<PathBuf> {
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let path = dir.join("statx-shim.so");
    if fs::read(&path).is_ok_and(|kept| kept == LIBRARY) {
        return Ok(path);
    }
    let fresh = dir.join("statx-shim.so.new");
    match fs::remove_file(&fresh) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&fresh)?;
    io::Write::write_all(&mut file, LIBRARY)?;
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    file.sync_all()?;
    fs::rename(&fresh, &path)?;
    Ok(path)
}

/// `agent` with the library preloaded into what it starts.
pub fn preloaded(agent: &AgentSettings) -> AgentSettings {
    let mut agent = agent.clone();
    agent.env.insert("LD_PRELOAD".to_owned(), INSIDE.to_owned());
    agent
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found in CI: a kernel image's start beside a create's, both installing, failed one
    /// of them with "No such file or directory".
    #[test]
    fn installs_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|scope| {
            let installs: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| install(dir.path())))
                .collect();
            for install in installs {
                assert_eq!(
                    install.join().unwrap().unwrap(),
                    dir.path().join("statx-shim.so")
                );
            }
        });
        assert_eq!(fs::read(dir.path().join("statx-shim.so")).unwrap(), LIBRARY);
    }
}
