//! Kills finished in the background. A sandbox with internet access has a network helper
//! (`slirp4netns`) in its cgroups, and that helper's exit takes 20–40 ms in the kernel after
//! its SIGKILL (closing its tap device waits for an RCU grace period): the sandbox's cgroups
//! cannot be removed before. So a kill is answered once the sandbox's own processes are
//! gone (its PID 1 reaped, which takes its whole PID namespace), with the helper killed too,
//! and the removal of its cgroups follows here. Nothing of the sandbox runs meanwhile: the
//! helper runs no instruction of its own after the SIGKILL, and it relays nothing.
//!
//! Each removal under way leaves a marker in a directory of host root's, so that a server
//! that stops before one finishes does it when it starts again; a server that shuts down
//! waits for them.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Mutex,
    thread::JoinHandle,
};

#[derive(Debug)]
pub struct Teardowns {
    /// One empty directory per removal under way, named by the sandbox's id (a directory,
    /// not a file, so that the markers spread over the filesystem: [`crate::spread`]; a
    /// server before that left files, which count the same).
    markers: PathBuf,
    /// The removals under way, by sandbox id.
    running: Mutex<Vec<(String, JoinHandle<()>)>>,
}

impl Teardowns {
    pub fn new(markers: PathBuf) -> Self {
        Self {
            markers,
            running: Mutex::default(),
        }
    }

    /// Runs `finish` for sandbox `id` on a thread of its own; `finish` says whether it
    /// finished (else the next server tries again). A thread that cannot be made leaves
    /// the work to the next server's start.
    pub fn defer(&self, id: &str, finish: impl FnOnce() -> bool + Send + 'static) {
        let marker = self.markers.join(id);
        if let Err(err) = self.mark(&marker) {
            tracing::warn!(%err, id, "cannot note a sandbox's cgroups as still to be removed");
        }
        let spawned = std::thread::Builder::new()
            .name("cove-teardown".into())
            .spawn(move || {
                if finish() {
                    remove(&marker);
                }
            });
        match spawned {
            Ok(thread) => {
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                running.retain(|(_, t)| !t.is_finished());
                running.push((id.to_owned(), thread));
            }
            Err(err) => tracing::warn!(
                %err,
                id,
                "cannot start removing a killed sandbox's cgroups; the next start will"
            ),
        }
    }

    fn mark(&self, marker: &Path) -> io::Result<()> {
        fs::create_dir_all(&self.markers)?;
        crate::spread::spread_subdirectories(&self.markers);
        match fs::create_dir(marker) {
            Err(err) if err.kind() != io::ErrorKind::AlreadyExists => Err(err),
            _ => Ok(()),
        }
    }

    /// Waits for every removal begun.
    pub fn wait(&self) {
        let running = std::mem::take(&mut *self.running.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, thread) in running {
            let _ = thread.join();
        }
    }

    /// Waits for the removal of sandbox `id`'s cgroups, if one is under way: a sandbox
    /// started again under the same id must not have its new cgroups removed.
    pub fn wait_for(&self, id: &str) {
        let thread = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running
                .iter()
                .position(|(of, _)| of == id)
                .map(|at| running.swap_remove(at).1)
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// The sandboxes whose removal a server began and did not finish.
    pub fn unfinished(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.markers) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|id| is_id(id))
            .collect()
    }

    /// Sandbox `id`'s removal is done.
    pub fn done(&self, id: &str) {
        remove(&self.markers.join(id));
    }
}

/// Removes a marker: a directory, or a file left by an earlier server.
fn remove(marker: &Path) {
    if fs::remove_dir(marker).is_err() {
        let _ = fs::remove_file(marker);
    }
}

/// Whether `name` can be a sandbox's id (and so a cgroup's name): nothing that reaches
/// outside a directory.
fn is_id(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    #[test]
    fn a_removal_is_noted_until_it_finishes_and_shutdown_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let teardowns = Teardowns::new(dir.path().join("teardowns"));
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let finished = Arc::new(AtomicUsize::new(0));
        let count = finished.clone();
        teardowns.defer("abc123", move || {
            wait.recv().unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            true
        });
        assert_eq!(teardowns.unfinished(), ["abc123"]);
        go.send(()).unwrap();
        teardowns.wait_for("other");
        teardowns.wait_for("abc123");
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        teardowns.wait();
        assert!(teardowns.unfinished().is_empty());
    }

    #[test]
    fn a_removal_that_failed_is_left_to_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let teardowns = Teardowns::new(dir.path().join("teardowns"));
        teardowns.defer("abc123", || false);
        teardowns.wait();
        assert_eq!(teardowns.unfinished(), ["abc123"]);
        teardowns.done("abc123");
        assert!(teardowns.unfinished().is_empty());
    }

    #[test]
    fn only_ids_are_taken_from_the_markers() {
        let dir = tempfile::tempdir().unwrap();
        let markers = dir.path().join("teardowns");
        fs::create_dir_all(&markers).unwrap();
        for name in ["good-id_1", "..", ".hidden", "a b"] {
            let _ = fs::write(markers.join(name), b"");
        }
        assert_eq!(Teardowns::new(markers).unfinished(), ["good-id_1"]);
    }

    #[test]
    fn a_marker_file_of_an_earlier_server_is_found_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let markers = dir.path().join("teardowns");
        fs::create_dir_all(&markers).unwrap();
        fs::write(markers.join("old-one"), b"").unwrap();
        let teardowns = Teardowns::new(markers.clone());
        teardowns.defer("new-one", || false);
        teardowns.wait();
        assert!(markers.join("new-one").is_dir());
        let mut unfinished = teardowns.unfinished();
        unfinished.sort();
        assert_eq!(unfinished, ["new-one", "old-one"]);
        teardowns.done("old-one");
        teardowns.done("new-one");
        assert!(teardowns.unfinished().is_empty());
        assert_eq!(fs::read_dir(&markers).unwrap().count(), 0);
    }
}
