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
