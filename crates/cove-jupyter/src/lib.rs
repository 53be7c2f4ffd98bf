//! A client of Jupyter kernels: the messaging protocol (signed multipart messages) over
//! ZeroMQ, written against <https://jupyter-client.readthedocs.io/en/stable/messaging.html>.
//!
//! [`ConnectionInfo`] is the connection file a kernel is started with; [`KernelClient`]
//! connects to its shell, control and IOPub channels and hands each request's replies and
//! broadcasts back on a stream of its own.
#![forbid(unsafe_code)]

pub mod client;
pub mod connection;
pub mod message;

pub use crate::{
    client::{Channel, ClientError, Incoming, KernelClient, Replies},
    connection::ConnectionInfo,
    message::{Header, Message, MessageError, Signer},
};

/// Options Cove starts IPython's kernel with: tracebacks in plain text (as E2B sends them),
/// and history kept in memory. History on disk costs a SQLite write per execution, about a
/// millisecond here, and a context's history does not outlive its kernel anyway.
pub const IPYKERNEL_OPTIONS: &[&str] = &[
    "--InteractiveShell.colors=NoColor",
    "--HistoryManager.hist_file=:memory:",
];
