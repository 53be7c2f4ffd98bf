//! A connection to one kernel: requests go out on the shell or control channel, and every
//! reply and IOPub broadcast comes back to the request it answers (by parent message id).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinHandle};
use zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, Socket, SocketRecv, SocketSend, SubSocket,
    ZmqMessage,
};

use crate::{
    connection::ConnectionInfo,
    message::{Message, MessageError, Signer},
};

/// The channel a message travelled on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Shell,
    Control,
    IoPub,
}

/// A message for one request.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub channel: Channel,
    pub message: Message,
}

/// Why talking to a kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the kernel's {channel:?} channel at {endpoint}")]
    Connect {
        channel: Channel,
        endpoint: String,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("cannot send to the kernel's {channel:?} channel")]
    Send {
        channel: Channel,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("the kernel did not answer within {0:?}")]
    NotReady(Duration),
    #[error("the connection to the kernel is closed")]
    Closed,
}

type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Incoming>>>>;

/// A connected kernel. Dropping it closes the connection.
pub struct KernelClient {
    session: String,
    signer: Signer,
    shell: tokio::sync::Mutex<DealerSendHalf>,
    control: tokio::sync::Mutex<DealerSendHalf>,
    routes: Routes,
    reader: JoinHandle<()>,
}

impl std::fmt::Debug for KernelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelClient")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Drop for KernelClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The replies and broadcasts of one request, in the order they arrive per channel. Ends
/// when the connection closes; dropping it stops the routing.
#[derive(Debug)]
pub struct Replies {
    id: String,
    messages: mpsc::UnboundedReceiver<Incoming>,
    routes: Routes,
}

impl Replies {
    /// The request's message id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next message for the request; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Incoming> {
        self.messages.recv().await
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        lock(&self.routes).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl KernelClient {
    /// Connects to the shell, control and IOPub channels (each connect retries until the
    /// kernel listens; bound it with a timeout). Call [`KernelClient::wait_ready`] before
    /// relying on broadcasts.
    pub async fn connect(info: &ConnectionInfo) -> Result<Self, ClientError> {
        async fn dealer(
            info: &ConnectionInfo,
            port: u16,
            channel: Channel,
        ) -> Result<DealerSocket, ClientError> {
            let mut socket = DealerSocket::new();
            let endpoint = info.endpoint(port);
            socket
                .connect(&endpoint)
                .await
                .map_err(|source| ClientError::Connect {
                    channel,
                    endpoint,
                    source,
                })?;
            Ok(socket)
        }
        let (shell_tx, shell_rx) = dealer(info, info.shell_port, Channel::Shell).await?.split();
        let (control_tx, control_rx) = dealer(info, info.control_port, Channel::Control)
            .await?
            .split();
        let mut iopub = SubSocket::new();
        let endpoint = info.endpoint(info.iopub_port);
        let connect_err = |source| ClientError::Connect {
            channel: Channel::IoPub,
            endpoint: endpoint.clone(),
            source,
        };
        iopub.connect(&endpoint).await.map_err(connect_err)?;
        iopub.subscribe("").await.map_err(connect_err)?;

        let signer = Signer::new(&info.key);
        let routes = Routes::default();
        let reader = tokio::spawn(read_all(
            signer.clone(),
            routes.clone(),
            shell_rx,
            control_rx,
            iopub,
        ));
        Ok(Self {
            session: uuid::Uuid::new_v4().to_string(),
            signer,
            shell: tokio::sync::Mutex::new(shell_tx),
            control: tokio::sync::Mutex::new(control_tx),
            routes,
            reader,
        })
    }

    /// The session id of this client's messages.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Sends a request of `msg_type` and returns the stream of what answers it.
    pub async fn request(
        &self,
        channel: Channel,
        msg_type: &str,
        content: Value,
    ) -> Result<Replies, ClientError> {
        self.send(channel, Message::request(&self.session, msg_type, content))
            .await
    }

    /// Sends a prepared request (see [`Message::request`]).
    pub async fn send(&self, channel: Channel, message: Message) -> Result<Replies, ClientError> {
        if self.reader.is_finished() {
            return Err(ClientError::Closed);
        }
        let id = message.header.msg_id.clone();
        let (tx, messages) = mpsc::unbounded_channel();
        lock(&self.routes).insert(id.clone(), tx);
        let replies = Replies {
            id,
            messages,
            routes: self.routes.clone(),
        };
        let frames: Vec<Bytes> = self.signer.encode(&message);
        let frames = ZmqMessage::try_from(frames).expect("an encoded message has frames");
        let socket = match channel {
            Channel::Shell => &self.shell,
            Channel::Control => &self.control,
            Channel::IoPub => unreachable!("nothing is sent on IOPub"),
        };
        socket
            .lock()
            .await
            .send(frames)
            .await
            .map_err(|source| ClientError::Send { channel, source })?;
        Ok(replies)
    }

    /// Waits until the kernel answers on shell and its IOPub broadcasts reach us (a
    /// subscription takes a moment to arrive, and broadcasts before it are lost). Returns
    /// the kernel's `kernel_info_reply` content.
    ///
    /// A request is sent again only after the kernel answered the one before (or after
    /// [`ASK_AGAIN`] without an answer): a kernel slowed by a loaded host is never handed
    /// requests faster than it answers them, which would leave every answer behind a queue.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut replies = self
                .request(
                    Channel::Shell,
                    "kernel_info_request",
                    Value::Object(Default::default()),
                )
                .await?;
            let (mut info, mut broadcast) = (None, false);
            let mut until = (tokio::time::Instant::now() + ASK_AGAIN).min(deadline);
            while info.is_none() || !broadcast {
                match tokio::time::timeout_at(until, replies.next()).await {
                    Ok(Some(incoming)) => match incoming.channel {
                        Channel::Shell => {
                            info = Some(incoming.message.content);
                            // Its `idle` status follows the reply when we are subscribed.
                            until =
                                (tokio::time::Instant::now() + BROADCAST_PATIENCE).min(deadline);
                        }
                        Channel::IoPub => broadcast = true,
                        Channel::Control => {}
                    },
                    Ok(None) => return Err(ClientError::Closed),
                    Err(_) => break,
                }
            }
            if let (Some(info), true) = (info, broadcast) {
                return Ok(info);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NotReady(timeout));
            }
        }
    }
}

/// How long [`KernelClient::wait_ready`] waits for an answer before asking again.
const ASK_AGAIN: Duration = Duration::from_secs(5);

/// How long [`KernelClient::wait_ready`] waits, after an answer, for the broadcasts that
/// show its IOPub subscription has arrived.
const BROADCAST_PATIENCE: Duration = Duration::from_millis(250);

/// Receives from every channel and hands each message to the request it answers.
async fn read_all(
    signer: Signer,
    routes: Routes,
    mut shell: DealerRecvHalf,
    mut control: DealerRecvHalf,
    mut iopub: SubSocket,
) {
    loop {
        let (channel, received) = tokio::select! {
            m = shell.recv() => (Channel::Shell, m),
            m = control.recv() => (Channel::Control, m),
            m = iopub.recv() => (Channel::IoPub, m),
        };
        let frames = match received {
            Ok(frames) => frames.into_vec(),
            Err(err) => {
                tracing::debug!(?err, ?channel, "kernel connection closed");
                break;
            }
        };
        let message = match signer.decode(&frames) {
            Ok(message) => message,
            Err(err @ (MessageError::BadSignature | MessageError::NoDelimiter)) => {
                tracing::warn!(?err, ?channel, "dropping a message not from the kernel");
                continue;
            }
            Err(err) => {
                tracing::warn!(?err, ?channel, "dropping a malformed kernel message");
                continue;
            }
        };
        let Some(parent) = message.parent_id() else {
            continue;
        };
        let route = lock(&routes).get(parent).cloned();
        if let Some(route) = route {
            let _ = route.send(Incoming { channel, message });
        }
    }
    lock(&routes).clear();
}
