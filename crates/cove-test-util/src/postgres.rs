//! A real PostgreSQL for tests: Debian's server (the newest major version under
//! `/usr/lib/postgresql`) with a fresh cluster in a temporary directory, on a free loopback
//! port, fsync off, and `createdb` for a database per test so tests can share a server.
//!
//! PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user
//! the Debian package creates. The package's own cluster (`main`, port 5432) is not used.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rustix::{
    fs::{Gid, Uid},
    process::{Pid, Signal, kill_process},
};

use crate::free_port;

/// Where Debian installs one directory per PostgreSQL major version.
const VERSIONS: &str = "/usr/lib/postgresql";
/// The superuser initdb creates, whom the URLs name.
const USER: &str = "cove";
/// The database `url()` names.
const DATABASE: &str = "cove";
/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running PostgreSQL server; stopped (by its pid) and its directory removed on drop.
pub struct TestPostgres {
    child: Option<Child>,
    /// The `bin` directory of the PostgreSQL version in use.
    bin: PathBuf,
    /// Who the server runs as, when that is not the current user (tests run as root).
    owner: Option<(Uid, Gid)>,
    /// It serves TLS, and TCP clients only over TLS ([`TestPostgres::start_with_tls`]).
    tls: bool,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestPostgres {
    /// Whether PostgreSQL's server binaries are installed (the `postgresql` Debian package).
    pub fn installed() -> bool {
        bin_dir().is_some()
    }

    /// A fresh cluster with an empty database `cove`, accepting connections on `url()`.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// [`TestPostgres::start`] serving TLS with this certificate chain and key (PEM), and
    /// refusing TCP clients that do not use it (`hostssl` only).
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Self {
        let bin = bin_dir().expect(
            "PostgreSQL is missing under /usr/lib/postgresql (scripts/setup installs the \
             postgresql Debian package)",
        );
        let owner = if rustix::process::getuid().is_root() {
            Some(system_user("postgres").expect(
                "PostgreSQL refuses to run as root and there is no `postgres` user to run it \
                 as (the postgresql Debian package creates it)",
            ))
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("cove-postgres-test-")
            .tempdir()
            .expect("a temporary PostgreSQL directory");
        fs::create_dir(dir.path().join("socket")).expect("the socket directory");
        if let Some((uid, gid)) = owner {
            for path in [dir.path().to_owned(), dir.path().join("socket")] {
                rustix::fs::chown(&path, Some(uid), Some(gid))
                    .expect("give the PostgreSQL directory to the postgres user");
            }
        }
        // Built before anything starts, so a panic below still stops and removes it all.
        let mut postgres = Self {
            child: None,
            bin,
            owner,
            tls: tls.is_some(),
            port: free_port(),
            dir,
        };
        postgres.initdb();
        if let Some((cert, key)) = tls {
            postgres.require_tls(cert, key);
        }
        // A free port may be taken by another test's server before ours binds it: then ours
        // exits at once, and it is tried again on another.
        for attempt in 1.. {
            match postgres.try_launch() {
                Ok(()) => break,
                Err(why) if attempt < 3 => {
                    eprintln!(
                        "PostgreSQL did not start on port {} ({why}); trying another",
                        postgres.port
                    );
                    postgres.port = free_port();
                }
                Err(why) => panic!("{why}"),
            }
        }
        postgres.createdb(DATABASE);
        postgres
    }

    /// `postgres://cove@127.0.0.1:PORT/cove`.
    pub fn url(&self) -> String {
        self.database_url(DATABASE)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates another empty database, `name` (letters, digits and `_`), and returns its URL:
    /// tests sharing one server each see only their own tables.
    pub fn fresh_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database names here are letters, digits and `_` (so URLs need no escaping): {name:?}"
        );
        self.createdb(name);
        self.database_url(name)
    }

    /// What the server logged (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Stops the server with a fast shutdown (SIGINT: sessions are ended, work is saved),
    /// SIGKILLing it if that takes over ten seconds.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), Signal::INT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        kill_server(child);
    }

    /// Kills the server and its backends (SIGKILL), as a crash would: connections break at
    /// once, and what was committed survives. `restart` recovers the cluster.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            kill_server(child);
        }
    }

    /// Starts the server again, on the same port and data, after a `stop` or `kill` (a
    /// running server is stopped first).
    pub fn restart(&mut self) {
        self.stop();
        self.clear_after_crash();
        self.launch();
    }

    fn database_url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command running one of the server's programs as the cluster's owner.
    fn as_owner(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        // The caller's working directory may be closed to the postgres user.
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid.as_raw()).gid(gid.as_raw());
        }
        command
    }

    fn initdb(&self) {
        let output = self
            .as_owner("initdb")
            .arg("--pgdata")
            .arg(self.data())
            .args([
                "--auth=trust",
                &format!("--username={USER}"),
                "--encoding=UTF8",
                "--no-locale",
                // Tests do not outlive the machine: no need to wait for the disk.
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Puts the certificate and key in the data directory (the key the owner's alone, as
    /// the server wants) and lets TCP clients in only over TLS.
    fn require_tls(&self, cert: &str, key: &str) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data();
        for (name, pem, mode) in [("server.crt", cert, 0o644), ("server.key", key, 0o600)] {
            let path = data.join(name);
            fs::write(&path, pem).expect("the server's TLS files");
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("their modes");
            if let Some((uid, gid)) = self.owner {
                rustix::fs::chown(&path, Some(uid), Some(gid)).expect("their owner");
            }
        }
        let hba = data.join("pg_hba.conf");
        let rules = fs::read_to_string(&hba).expect("pg_hba.conf");
        let tls_only: String = rules
            .lines()
            .map(|line| match line.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{line}\n"),
            })
            .collect();
        fs::write(&hba, tls_only).expect("pg_hba.conf");
    }

    /// Starts the server as our child and waits until it accepts connections.
    fn launch(&mut self) {
        if let Err(why) = self.try_launch() {
            panic!("{why}");
        }
    }

    /// [`TestPostgres::launch`], saying why when the server does not start.
    fn try_launch(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the PostgreSQL log");
        let stdout = log.try_clone().expect("the PostgreSQL log");
        let child = self
            .as_owner("postgres")
            .arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path().join("socket"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Tests only: a crash of the machine may lose or corrupt the cluster. A crash of
            // the server loses nothing committed: `synchronous_commit` stays on, since with
            // fsync off it costs one write(2) per commit, and off it lets `kill` lose the
            // last commits (still in shared memory), which a "database down" test would
            // read as a bug in the code under test.
            .args(["-c", "fsync=off"])
            .args(["-c", "full_page_writes=off"])
            // Dynamic shared memory as files in the data directory, not in /dev/shm, so a
            // killed server leaves none behind outside the directory we remove.
            .args(["-c", "dynamic_shared_memory_type=mmap"])
            .args(if self.tls { &["-c", "ssl=on"][..] } else { &[] })
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        self.wait_ready()
    }

    /// Whether our server says it is ready (its `postmaster.pid`: our child's pid, status
    /// `ready`): another server answering on the port does not count.
    fn says_ready(&self) -> bool {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return false;
        };
        let Ok(lock) = fs::read_to_string(self.data().join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = lock.lines().collect();
        lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
            && lines.get(7).map(|l| l.trim()) == Some("ready")
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("the server was just started");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!(
                    "postgres exited while starting ({status}); its log ends:\n{}",
                    self.log_tail()
                ));
            }
            if !self.says_ready() {
                assert!(
                    Instant::now() < deadline,
                    "postgres did not get ready within {START_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail()
                );
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["--quiet", "--host=127.0.0.1", "--timeout=1"])
                .arg(format!("--port={}", self.port))
                .arg(format!("--username={USER}"))
                // A database that exists before `cove` does, so the log stays quiet.
                .arg("--dbname=postgres")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("pg_isready runs");
            if ready.success() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections on port {} within {START_TIMEOUT:?}; its \
                 log ends:\n{}",
                self.port,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn createdb(&self, name: &str) {
        let output = Command::new(self.bin.join("createdb"))
            .args(["--host=127.0.0.1", &format!("--username={USER}")])
            .arg(format!("--port={}", self.port))
            .arg(name)
            .stdin(Stdio::null())
            .output()
            .expect("createdb runs");
        assert!(
            output.status.success(),
            "createdb {name} failed: {}\npostgres log ends:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log_tail()
        );
    }

    /// After a kill, removes what the dead server could not: the System V shared memory
    /// block that marks the cluster in use (named in `postmaster.pid`), the lock file itself,
    /// and the stale socket and its lock.
    fn clear_after_crash(&self) {
        let lock_file = self.data().join("postmaster.pid");
        let Ok(lock) = fs::read_to_string(&lock_file) else {
            return;
        };
        // Line 7 holds the block's key and id.
        let block = lock.lines().nth(6).and_then(|line| {
            let mut fields = line.split_whitespace();
            Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
        });
        if let Some((key, id)) = block
            && unused_shared_memory(&key, &id)
        {
            let _ = Command::new("ipcrm")
                .args(["-m", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_file(lock_file);
        if let Ok(entries) = fs::read_dir(self.dir.path().join("socket")) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// The last lines of the server's log.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
        self.clear_after_crash();
    }
}

/// The `bin` directory of the newest PostgreSQL major version installed.
fn bin_dir() -> Option<PathBuf> {
    fs::read_dir(VERSIONS)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

/// The uid and gid of the system user `name`.
fn system_user(name: &str) -> Option<(Uid, Gid)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&name) {
            return None;
        }
        let uid = fields.get(2)?.parse().ok()?;
        let gid = fields.get(3)?.parse().ok()?;
        Some((Uid::from_raw(uid), Gid::from_raw(gid)))
    })
}

fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

/// SIGKILLs the server and every process it started, by pid, and waits until they are gone
/// (a restart refuses a data directory whose old backends still hold its shared memory).
fn kill_server(mut child: Child) {
    let pid = child.id();
    // Stopped, the server cannot reap its backends, so their pids stay theirs until they
    // are killed; and it cannot start new ones behind our back.
    signal(pid, Signal::STOP);
    poll(STOP_TIMEOUT, || {
        matches!(process_state(pid), Some('T' | 'Z' | 'X') | None)
    });
    let backends = children_of(pid);
    for &backend in &backends {
        signal(backend, Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
    // Orphaned, the backends are reaped by init; a zombie holds nothing any more.
    poll(STOP_TIMEOUT, || {
        backends
            .iter()
            .all(|&backend| matches!(process_state(backend), Some('Z' | 'X') | None))
    });
}

/// The state letter of process `pid` (`R`, `S`, `T`, `Z`…), or `None` once it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may itself hold spaces and parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// The pids of the processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// Whether the System V shared memory block `id` with key `key` exists and no process has
/// it attached.
fn unused_shared_memory(key: &str, id: &str) -> bool {
    let Ok(table) = fs::read_to_string("/proc/sysvipc/shm") else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // key shmid perms size cpid lpid nattch …
        fields.len() > 6 && fields[0] == key && fields[1] == id && fields[6] == "0"
    })
}

/// Polls `done` every few milliseconds until it holds or `timeout` passes.
fn poll(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `sql` with psql against `url`; its output (unaligned, tuples only), or its error.
    fn psql(postgres: &TestPostgres, url: &str, sql: &str) -> Result<String, String> {
        let output = Command::new(postgres.bin.join("psql"))
            .args([
                "--no-psqlrc",
                "--tuples-only",
                "--no-align",
                "--command",
                sql,
            ])
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .expect("psql runs");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    fn server_pid(postgres: &TestPostgres) -> u32 {
        postgres.child.as_ref().expect("a running server").id()
    }

    /// System V shared memory blocks that process `pid` created.
    fn shared_memory_of(pid: u32) -> Vec<String> {
        let table = fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter(|line| line.split_whitespace().nth(4) == Some(&pid.to_string()))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn postgres_serves_survives_a_kill_and_leaves_nothing_behind() {
        if !TestPostgres::installed() {
            eprintln!("SKIPPED: PostgreSQL is not installed (Debian package postgresql)");
            return;
        }
        let started = Instant::now();
        let mut postgres = TestPostgres::start();
        eprintln!("TestPostgres::start took {:?}", started.elapsed());
        let url = postgres.url();
        assert_eq!(
            url,
            format!("postgres://cove@127.0.0.1:{}/cove", postgres.port())
        );
        assert_eq!(psql(&postgres, &url, "select 1").as_deref(), Ok("1"));
        let first = server_pid(&postgres);
        if rustix::process::getuid().is_root() {
            let status = fs::read_to_string(format!("/proc/{first}/status")).expect("status");
            let uid = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .expect("Uid:");
            assert!(!uid.contains("\t0\t"), "postgres runs as root: {uid}");
        }

        let apart = postgres.fresh_database("apart");
        assert_eq!(psql(&postgres, &apart, "select 1").as_deref(), Ok("1"));
        psql(
            &postgres,
            &apart,
            "create table kept (n int); insert into kept values (7)",
        )
        .expect("a table");
        let names = psql(&postgres, &url, "select datname from pg_database").expect("names");
        assert!(names.lines().any(|n| n == "apart"), "{names}");

        postgres.kill();
        assert_eq!(process_state(first), None, "the killed server is gone");
        assert!(
            psql(&postgres, &url, "select 1").is_err(),
            "a killed server answers"
        );

        postgres.restart();
        assert_eq!(psql(&postgres, &url, "select 1").as_deref(), Ok("1"));
        assert_eq!(
            psql(&postgres, &apart, "select n from kept").as_deref(),
            Ok("7")
        );
        assert!(
            shared_memory_of(first).is_empty(),
            "the first server's memory stays"
        );

        let second = server_pid(&postgres);
        let dir = postgres.dir.path().to_owned();
        drop(postgres);
        assert_eq!(process_state(second), None, "the server outlived its drop");
        assert!(!dir.exists(), "{} outlived its drop", dir.display());
        assert!(
            shared_memory_of(second).is_empty(),
            "shared memory outlived its drop"
        );
    }
}
