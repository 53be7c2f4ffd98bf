//! Async Rust client for Cove: sandboxes, their files, processes and code.
//!
//! [`Sandbox`] creates and drives sandboxes through `cove serve` (or any E2B-compatible
//! control plane); [`AgentClient`] talks to one sandbox's agent directly.
#![forbid(unsafe_code)]

pub mod agent;
pub mod commands;
pub mod config;
pub mod error;
pub mod files;
pub mod pty;
mod rpc;
pub mod sandbox;
pub mod templates;

pub use crate::{
    agent::AgentClient,
    commands::{Command, CommandHandle, CommandOutput, Output, ProcessInfo, Signal},
    config::ConnectionConfig,
    error::{CommandExit, Error, Result},
    files::{Entry, FileKind, FsEvent, FsEventKind, Written},
    pty::PtyOptions,
    sandbox::{CreateOptions, Sandbox},
};
pub use cove_proto::rest;
