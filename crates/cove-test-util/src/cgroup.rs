//! Running a process in a cgroup v2 directory of a test's own, as a sandbox's network helper
//! runs in its egress cgroup: the eBPF programs attached there judge its connections.

use std::{path::Path, process::Command};

/// Runs the Python `script` with `args` — in `cgroup` (its directory) when given, else where
/// the test runs — and returns what it printed, trimmed; panics if it fails.
pub fn python(cgroup: Option<&Path>, script: &str, args: &[&str]) -> String {
    let mut shell = String::new();
    if let Some(dir) = cgroup {
        shell.push_str(&format!("echo $$ > {}/cgroup.procs && ", dir.display()));
    }
    shell.push_str("exec /usr/bin/python3 -c \"$0\" \"$@\"");
    let out = Command::new("sh")
        .args(["-c", &shell, script])
        .args(args)
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
