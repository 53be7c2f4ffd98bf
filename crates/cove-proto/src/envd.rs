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
