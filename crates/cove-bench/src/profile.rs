//! `--profile DIR`: flame graphs of the machine while Cove's side of chosen rows runs.
//!
//! Each profile is one `perf record -a` (every process on the machine, kernel and user
//! stacks unwound from DWARF) started with its events off; the bench turns them on only
//! while Cove's own timed work of that row runs (never during its baseline), through
//! perf's control FIFO. At the end each recording is folded by process and stack and drawn
//! as `DIR/<name>.svg` with `inferno`. The rows of a profiled run are slowed by the
//! sampling and are not for the report's table.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
};

use anyhow::Context;

/// Samples a second on each CPU: enough for windows of a few seconds, little enough that
/// copying 16 KiB of stack per sample does not swamp the two cores.
const FREQUENCY: &str = "499";

/// The stack copied with each sample for unwinding (perf's `dwarf,SIZE`).
const STACK_BYTES: &str = "16384";

/// Where flame graphs go, and the recordings made so far, by name.
pub struct Profiler {
    out: PathBuf,
    work: tempfile::TempDir,
    sessions: Mutex<HashMap<&'static str, Session>>,
}

impl std::fmt::Debug for Profiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiler").field("out", &self.out).finish()
    }
}

/// One `perf record`, its events on or off through its control FIFO.
struct Session {
    perf: Child,
    data: PathBuf,
    control: File,
    ack: BufReader<File>,
}

/// While alive, the named recording samples; dropping it turns the recording off.
#[must_use = "the profile records only while the window is alive"]
pub struct Window<'a> {
    profiler: &'a Profiler,
    name: &'static str,
}

impl Profiler {
    /// Checks that `perf` runs and makes `out`.
    pub fn new(out: &Path) -> anyhow::Result<Self> {
        let version = Command::new("perf")
            .arg("version")
            .output()
            .context("--profile needs `perf` (Debian: linux-perf)")?;
        anyhow::ensure!(version.status.success(), "`perf version` failed");
        std::fs::create_dir_all(out).with_context(|| format!("cannot make {}", out.display()))?;
        let work = tempfile::Builder::new()
            .prefix("cove-bench-profile-")
            .tempdir()
            .context("cannot make a temporary directory")?;
        Ok(Self {
            out: out.to_owned(),
            work,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Turns the recording `name` on (starting it the first time) until the window drops.
    pub fn window(&self, name: &'static str) -> anyhow::Result<Window<'_>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if !sessions.contains_key(name) {
            let session = Session::start(self.work.path(), name)?;
            sessions.insert(name, session);
        }
        if let Some(session) = sessions.get_mut(name) {
            session.command("enable")?;
        }
        Ok(Window {
            profiler: self,
            name,
        })
    }

    /// Stops every recording and draws each as `<out>/<name>.svg`; returns the files.
    pub fn finish(self) -> anyhow::Result<Vec<PathBuf>> {
        let sessions = self
            .sessions
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let mut drawn = Vec::new();
        for (name, session) in sessions {
            let data = session.stop()?;
            let svg = self.out.join(format!("{name}.svg"));
            draw(&data, name, &svg)?;
            drawn.push(svg);
        }
        drawn.sort();
        Ok(drawn)
    }
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        let mut sessions = self
            .profiler
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(session) = sessions.get_mut(self.name)
            && let Err(err) = session.command("disable")
        {
            eprintln!("cannot pause the profile {}: {err:#}", self.name);
        }
    }
}

impl Session {
    fn start(work: &Path, name: &str) -> anyhow::Result<Self> {
        let fifo = |suffix: &str| -> anyhow::Result<File> {
            let path = work.join(format!("{name}.{suffix}"));
            let made = Command::new("mkfifo")
                .arg(&path)
                .status()
                .context("cannot run mkfifo")?;
            anyhow::ensure!(made.success(), "mkfifo {} failed", path.display());
            // Read and write: opening a FIFO so never waits for its other end.
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))
        };
        let (control, ack) = (fifo("control")?, fifo("ack")?);
        let data = work.join(format!("{name}.data"));
        let control_path = work.join(format!("{name}.control"));
        let ack_path = work.join(format!("{name}.ack"));
        let perf = Command::new("perf")
            .args(["record", "--quiet", "--all-cpus", "--freq", FREQUENCY])
            .arg(format!("--call-graph=dwarf,{STACK_BYTES}"))
            // Off until the first window.
            .arg("--delay=-1")
            .arg(format!(
                "--control=fifo:{},{}",
                control_path.display(),
                ack_path.display()
            ))
            .arg("--output")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start perf record")?;
        let mut session = Self {
            perf,
            data,
            control,
            ack: BufReader::new(ack),
        };
        // perf answers once it has set up every CPU's buffer.
        session.command("ping")?;
        Ok(session)
    }

    /// Sends `command` to perf and waits for its acknowledgement.
    fn command(&mut self, command: &str) -> anyhow::Result<()> {
        writeln!(self.control, "{command}").context("cannot write to perf's control FIFO")?;
        let mut answer = String::new();
        self.ack
            .read_line(&mut answer)
            .context("cannot read perf's acknowledgement")?;
        anyhow::ensure!(
            acknowledged(&answer),
            "perf answered {answer:?} to {command}"
        );
        Ok(())
    }

    /// Ends the recording and waits for perf to write it out.
    fn stop(mut self) -> anyhow::Result<PathBuf> {
        writeln!(self.control, "stop").context("cannot write to perf's control FIFO")?;
        let status = self.perf.wait().context("cannot wait for perf")?;
        anyhow::ensure!(status.success(), "perf record ended with {status}");
        Ok(self.data.clone())
    }
}

impl Drop for Session {
    /// A run that fails leaves no `perf` behind (this one, by its pid).
    fn drop(&mut self) {
        if let Ok(None) = self.perf.try_wait() {
            let _ = self.perf.kill();
            let _ = self.perf.wait();
        }
    }
}

/// Whether `line` read from perf's acknowledgement FIFO is its "ack": perf ends each
/// answer with a NUL after the newline, so a line read after the first starts with one.
fn acknowledged(line: &str) -> bool {
    line.trim_matches(|c: char| c == '\0' || c.is_whitespace()) == "ack"
}

/// `perf script` of `data`, folded by process and stack, drawn into `svg`.
fn draw(data: &Path, name: &str, svg: &Path) -> anyhow::Result<()> {
    let mut script = Command::new("perf")
        .args(["script", "--no-inline", "--input"])
        .arg(data)
        // No symbol server lookups: they wait minutes for each binary on a closed network.
        .env("DEBUGINFOD_URLS", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start perf script")?;
    let stacks = script.stdout.take().context("perf script has no stdout")?;
    let mut folded = Vec::new();
    let mut options = inferno::collapse::perf::Options::default();
    options.include_pid = false;
    inferno::collapse::Collapse::collapse(
        &mut inferno::collapse::perf::Folder::from(options),
        BufReader::new(stacks),
        &mut folded,
    )
    .context("cannot fold perf's stacks")?;
    let status = script.wait().context("cannot wait for perf script")?;
    anyhow::ensure!(status.success(), "perf script ended with {status}");
    anyhow::ensure!(!folded.is_empty(), "the profile {name} holds no samples");
    let mut options = inferno::flamegraph::Options::default();
    options.title = format!("{name}: the whole machine while Cove's side ran");
    options.count_name = "samples".into();
    // Frames narrower than a pixel of the 1200 are left out: the files stay small.
    options.min_width = 1.0;
    let out = File::create(svg).with_context(|| format!("cannot write {}", svg.display()))?;
    inferno::flamegraph::from_reader(&mut options, &folded[..], BufWriter::new(out))
        .with_context(|| format!("cannot draw {}", svg.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::acknowledged;

    #[test]
    fn perfs_answers_are_read_with_the_nul_it_leaves_between_them() {
        assert!(acknowledged("ack\n"));
        assert!(acknowledged("\0ack\n"));
        assert!(!acknowledged("\0nack\n"));
        assert!(!acknowledged(""));
    }
}
