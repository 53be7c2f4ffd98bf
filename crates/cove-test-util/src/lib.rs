//! Test support: start real Cove processes on free ports and wait for things with deadlines;
//! a fake runtime for unit tests of the server's own logic.
#![forbid(unsafe_code)]

mod agent;
pub mod cgroup;
mod fake_runtime;
pub mod image;
mod mirror;
pub mod name_server;
mod postgres;
pub mod raw_http;
mod registry;
mod server;
mod wait;

pub use crate::{
    agent::{AgentOptions, TestAgent},
    fake_runtime::{FakeRuntime, FakeSandbox},
    mirror::{MIRRORED, seeded_mirror},
    postgres::TestPostgres,
    registry::TestRegistry,
    server::{TestServer, built_cove},
    wait::{free_port, terminate, wait_until},
};

/// The repository's root (for scripts under `tests/support`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the test-util crate lives two levels below the repository root")
        .to_owned()
}
