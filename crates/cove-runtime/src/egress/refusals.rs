//! Refused connections told in the sandbox's log, as JSON lines of the shape its agent writes
//! (`timestamp`, `level`, `fields.message`, `target`), so `GET /sandboxes/{id}/logs` shows them.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::SystemTime,
};

use super::Refusal;

/// The `target` of the lines, where they come from.
const TARGET: &str = "cove::egress";

/// Appends one line per rule to the log at `path` (which only host root writes).
pub fn write(path: &Path, refusals: &[(Refusal, u64)]) -> io::Result<()> {
    let mut text = String::new();
    let timestamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    for (rule, count) in refusals {
        let noun = if *count == 1 {
            "connection"
        } else {
            "connections"
        };
        let line = serde_json::json!({
            "timestamp": timestamp,
            "level": "WARN",
            "fields": {
                "message": format!("{count} {noun} refused by {rule}"),
                "rule": rule.to_string(),
                "refused": count,
            },
            "target": TARGET,
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let mut log = fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    log.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_json_line_per_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, "").unwrap();
        write(
            &path,
            &[(Refusal::Server, 1), (Refusal::Deny("0.0.0.0/0".into()), 3)],
        )
        .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0]["fields"]["message"],
            "1 connection refused by the server's egress rules (the host, private ranges)"
        );
        assert_eq!(
            lines[1]["fields"]["message"],
            "3 connections refused by denyOut 0.0.0.0/0"
        );
        assert_eq!(lines[1]["level"], "WARN");
    }
}
