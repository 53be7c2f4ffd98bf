//! Async Rust client for Cove: sandboxes, their files, processes and code.
//!
//! [`AgentClient`] talks to one sandbox's agent, directly or through `cove serve`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod commands;
pub mod error;
pub mod files;
mod rpc;

pub use crate::{
    agent::AgentClient,
    commands::{Command, CommandHandle, CommandOutput, Output, ProcessInfo, Signal},
    error::{CommandExit, Error, Result},
    files::{Entry, FileKind, FsEvent, FsEventKind, Written},
};
