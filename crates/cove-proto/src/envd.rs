//! What identifies Cove's agent on the wire as E2B's envd: its version and its ports.

/// The envd version the agent is compatible with. The E2B SDKs switch features off below
/// 0.6.4, so both the agent (`/health`, `/metrics`) and the control plane report this.
pub const VERSION: &str = "0.6.5";

/// The agent's port inside a sandbox: envd's API (files, processes).
pub const PORT: u16 = 49983;

/// The code interpreter's port inside a sandbox (E2B's Jupyter port).
pub const CODE_INTERPRETER_PORT: u16 = 49999;

/// Where the agent also serves the code interpreter on its own socket, for `cove serve`:
/// requests to [`CODE_INTERPRETER_PORT`] reach it there without a tunnel.
pub const INTERPRETER_PREFIX: &str = "/_cove/interpreter";

/// Cove's own route of the code interpreter (below [`INTERPRETER_PREFIX`] on the agent's
/// socket): starts the default Python kernel ahead of use and answers once it is ready (a
/// server snapshots a gVisor sandbox so, with its kernel up).
pub const INTERPRETER_WARM: &str = "/_cove/warm";

/// The upgrade `cove serve` asks for on `GET /files`. An agent that takes it answers a file
/// of at least [`FILE_UPGRADE_MIN_BYTES`] (sent as is, not gzip-compressed) with `101`, the
/// response's other headers and [`FILE_LENGTH_HEADER`], then writes that many bytes of the
/// file on the raw connection (fewer only when the file shrank meanwhile) and closes it. On
/// its Unix sockets it sends them with `sendfile`: the kernel moves page-cache pages into
/// the socket without copying them through the agent.
/// Any other answer is the ordinary one, on a connection that stays open.
///
/// Uploads take the same upgrade the other way. `cove serve` sends a `POST /files` of a raw
/// body (`application/octet-stream`, no content coding) of at least
/// [`FILE_UPGRADE_MIN_BYTES`] as the same request with no body, `Upgrade: cove-file` and
/// [`FILE_LENGTH_HEADER`] giving the body's length. The agent checks it as an upload and
/// makes the file ready; a refusal is the ordinary answer. Otherwise it answers `101`, and
/// the server writes that many bytes on the raw connection (nothing before the `101`). The
/// agent then writes its answer there, [`upload_answer`]'s form, and closes the connection.
/// On its Unix sockets it moves the bytes into the file with `splice`.
pub const FILE_UPGRADE: &str = "cove-file";

/// The number of bytes that follow an agent's [`FILE_UPGRADE`] answer, or that follow the
/// server's request for it on an upload.
pub const FILE_LENGTH_HEADER: &str = "x-cove-file-length";

/// Most bytes of an agent's answer to an upload through [`FILE_UPGRADE`].
pub const UPLOAD_ANSWER_MAX_BYTES: usize = 64 << 10;

/// An agent's answer to an upload through [`FILE_UPGRADE`]: the HTTP status as three
/// digits, a newline, and the JSON body the ordinary answer would have had.
pub fn upload_answer(status: u16, json: &[u8]) -> Vec<u8> {
    let mut answer = format!("{status:03}\n").into_bytes();
    answer.extend_from_slice(json);
    answer
}

/// The status and JSON body of an [`upload_answer`]; `None` when it is not one.
pub fn parse_upload_answer(answer: &[u8]) -> Option<(u16, &[u8])> {
    let (status, json) = answer.split_at_checked(4)?;
    if status[3] != b'\n' || !status[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = std::str::from_utf8(&status[..3]).ok()?.parse().ok()?;
    (100..=599).contains(&status).then_some((status, json))
}

/// The smallest file an agent sends through [`FILE_UPGRADE`]. Smaller ones keep the
/// connection, which the server reuses for the next request; a connection that carried
/// more than this is closed after its exchange anyway (`agent_link`), so the upgrade, which
/// takes the connection, costs larger files nothing.
pub const FILE_UPGRADE_MIN_BYTES: u64 = 256 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_answers_read_back() {
        let answer = upload_answer(507, br#"{"code":507}"#);
        assert_eq!(
            parse_upload_answer(&answer),
            Some((507, &br#"{"code":507}"#[..]))
        );
        assert_eq!(parse_upload_answer(b"200\n"), Some((200, &b""[..])));
        for bad in [
            &b""[..],
            b"20",
            b"200",
            b"2000\n",
            b"abc\n{}",
            b"099\n",
            b"600\n",
        ] {
            assert_eq!(parse_upload_answer(bad), None, "{bad:?}");
        }
    }
}
