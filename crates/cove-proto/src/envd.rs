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
pub const FILE_UPGRADE: &str = "cove-file";

/// The number of bytes that follow an agent's [`FILE_UPGRADE`] answer.
pub const FILE_LENGTH_HEADER: &str = "x-cove-file-length";

/// The smallest file an agent sends through [`FILE_UPGRADE`]. Smaller ones keep the
/// connection, which the server reuses for the next request; a connection that carried
/// more than this is closed after its exchange anyway (`agent_link`), so the upgrade, which
/// takes the connection, costs larger files nothing.
pub const FILE_UPGRADE_MIN_BYTES: u64 = 256 << 10;
