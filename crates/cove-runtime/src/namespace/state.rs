//! What the backend knows of one sandbox: its PID 1, uid range, network, and whether it is
//! paused. It travels in the sandbox's [`crate::Handle`] and is also kept in the sandbox's
//! own directory (`state.json`, host root's alone), written before each transition takes
//! effect where that matters: so a server killed halfway through a pause or a resume leaves
//! a file that says where the sandbox was going, and the next server finishes or undoes the
//! transition from it ([`crate::Runtime::recover`]), even when the handle it stored is older.

use std::{
    fs,
    io::{self, Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::PauseMode;

/// The file's name in the sandbox's directory.
const FILE: &str = "state.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// PID 1 on the host, with its start time (against pid reuse). While paused without
    /// memory, the last one (it no longer runs).
    pub pid: u32,
    pub start_time: u64,
    /// The uid range (see [`crate::userns::base_for_slot`]); free while paused without memory.
    pub slot: u32,
    /// Whether it has internet access (its network helper's egress is filtered).
    #[serde(default)]
    pub network: bool,
    /// Set while it is paused (or being paused).
    #[serde(default)]
    pub paused: Option<PauseMode>,
}

/// The state kept in the sandbox directory `dir`, if there is one (the gVisor backend keeps
/// its own kind of state the same way).
pub fn load<T: DeserializeOwned>(dir: &Path) -> io::Result<Option<T>> {
    let mut file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(FILE))
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut raw = String::new();
    file.read_to_string(&mut raw)?;
    serde_json::from_str(&raw)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Replaces the state kept in `dir` (whole: a reader sees the old one or the new one).
pub fn save<T: Serialize>(dir: &Path, state: &T) -> io::Result<()> {
    let json = serde_json::to_vec(state).map_err(io::Error::other)?;
    let staging = dir.join(format!("{FILE}.new"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&staging)?;
    file.write_all(&json)?;
    drop(file);
    fs::rename(staging, dir.join(FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips_and_is_absent_at_first() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load::<State>(dir.path()).unwrap(), None);
        let state = State {
            pid: 42,
            start_time: 7,
            slot: 3,
            network: true,
            paused: Some(PauseMode::Memory),
        };
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(state));
        // Handles stored before pauses existed still read.
        let old: State =
            serde_json::from_str(r#"{"pid":1,"start_time":2,"slot":3,"network":false}"#).unwrap();
        assert_eq!(old.paused, None);
    }
}
