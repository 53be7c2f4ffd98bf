//! Async Rust client for Cove: sandboxes, their files, processes and code.
//!
//! [`Sandbox`] creates and drives sandboxes through `cove serve` (or any E2B-compatible
//! control plane); [`AgentClient`] talks to one sandbox's agent directly. Every call fails
//! with one [`Error`], in the categories the E2B SDKs use.
//!
//! ```
//! use cove_sdk::{ConnectionConfig, CreateOptions, Error, Sandbox};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
//! # let server = cove_test_util::TestServer::for_doctest().await;
//! // From E2B_API_URL / E2B_API_KEY or COVE_API_URL / COVE_API_KEY:
//! // let config = ConnectionConfig::from_env()?;
//! let config = ConnectionConfig::new(&server.url(), &server.api_key)?;
//! let sandbox = Sandbox::create(&config, CreateOptions::default()).await?;
//! sandbox.files().write("/home/user/hello.py", "print('hello')").await?;
//! let output = sandbox.commands().run("python3 hello.py").await?;
//! assert_eq!(output.stdout, "hello\n");
//! assert!(matches!(sandbox.commands().run("exit 2").await, Err(Error::CommandExit(e)) if e.exit_code == 2));
//! sandbox.kill().await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod agent;
pub mod commands;
pub mod config;
pub mod error;
pub mod files;
pub mod interpreter;
pub mod pty;
mod rpc;
pub mod sandbox;
pub mod snapshots;
pub mod templates;
pub mod volumes;

pub use crate::{
    agent::AgentClient,
    commands::{Command, CommandHandle, CommandOutput, Output, ProcessInfo, Signal},
    config::ConnectionConfig,
    error::{CommandExit, Error, Result},
    files::{Entry, FileKind, FsEvent, FsEventKind, Written},
    interpreter::{
        CodeContext, CodeInterpreter, CodeResult, Execution, ExecutionError, ExecutionEvent,
        RunCodeOptions,
    },
    pty::PtyOptions,
    sandbox::{CreateOptions, Sandbox},
};
pub use cove_proto::rest;
