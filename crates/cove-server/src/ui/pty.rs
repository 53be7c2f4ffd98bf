//! A shell on a pseudo-terminal in a sandbox, through its agent's `process.Process` service
//! as the SDKs' `sandbox.pty` does: `Start` with a PTY (its event stream carries the output),
//! then `SendInput`, `Update` (resize) and `SendSignal` calls naming its pid.

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use cove_proto::{
    connect::{self, Codec, FrameDecoder, Wire},
    process::{
        ProcessConfig, ProcessInput, ProcessSelector, Pty as PtySpec, SendInputRequest,
        SendSignalRequest, Signal, StartRequest, StartResponse, UpdateRequest, process_event,
        process_input, process_selector, pty,
    },
};
use cove_runtime::AgentEndpoint;
use http::header;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;

use crate::agent_link::{self, LinkError};

/// The user a terminal runs as (E2B's default user).
const USER: &str = "user";
/// The shell, started as a login shell so that the user's profile is read.
const SHELL: &str = "/bin/bash";
const HOME: &str = "/home/user";

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the agent refused {call}: {message}")]
    Refused { call: &'static str, message: String },
    #[error("the agent's stream broke off: {0}")]
    Stream(String),
}

/// Columns and rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub cols: u32,
    pub rows: u32,
}

impl Size {
    /// A size the agent accepts: at least 1×1, at most 1000×1000.
    pub fn clamped(self) -> Self {
        Self {
            cols: self.cols.clamp(1, 1000),
            rows: self.rows.clamp(1, 1000),
        }
    }

    fn spec(self) -> PtySpec {
        PtySpec {
            size: Some(pty::Size {
                cols: self.cols,
                rows: self.rows,
            }),
        }
    }
}

/// What the shell did.
#[derive(Debug)]
pub enum Event {
    Output(Bytes),
    /// It ended; how, in words.
    Exited(String),
}

/// A running shell: its pid, and a connection for the calls that drive it.
pub struct Pty {
    pid: u32,
    agent: AgentEndpoint,
    token: String,
    control: Option<SendRequest<Body>>,
    events: hyper::body::Incoming,
    decoder: FrameDecoder,
    ended: bool,
}

impl Pty {
    /// Starts a login shell of size `size` in the sandbox behind `agent`.
    pub async fn start(agent: AgentEndpoint, token: String, size: Size) -> Result<Self, PtyError> {
        let request = StartRequest {
            process: Some(ProcessConfig {
                cmd: SHELL.to_owned(),
                args: vec!["-i".to_owned(), "-l".to_owned()],
                envs: [("TERM".to_owned(), "xterm-256color".to_owned())].into(),
                cwd: Some(HOME.to_owned()),
            }),
            pty: Some(size.clamped().spec()),
            tag: None,
            stdin: Some(true),
        };
        let mut sender = agent_link::connect(&agent).await?;
        let response = sender
            .send_request(rpc(
                "Start",
                &token,
                "application/connect+json",
                connect::envelope(0, &Codec::Json.encode(&request)),
            )?)
            .await
            .map_err(LinkError::from)?;
        if !response.status().is_success() {
            return Err(refusal("Start", response).await);
        }
        let mut pty = Self {
            pid: 0,
            agent,
            token,
            control: None,
            events: response.into_body(),
            decoder: FrameDecoder::default(),
            ended: false,
        };
        // The first event names the pid every later call needs.
        pty.pid = loop {
            match pty.next_message().await? {
                Some(process_event::Event::Start(started)) => break started.pid,
                Some(process_event::Event::End(end)) => {
                    return Err(PtyError::Refused {
                        call: "Start",
                        message: format!("the shell ended at once: exit status {}", end.exit_code),
                    });
                }
                Some(_) => {}
                None => {
                    return Err(PtyError::Stream(
                        "the stream ended before the shell started".to_owned(),
                    ));
                }
            }
        };
        Ok(pty)
    }

    /// The next output of the shell, or how it ended (then nothing more).
    pub async fn next(&mut self) -> Result<Option<Event>, PtyError> {
        while !self.ended {
            match self.next_message().await? {
                Some(process_event::Event::Data(data)) => {
                    if let Some(process_event::data_event::Output::Pty(bytes)) = data.output {
                        return Ok(Some(Event::Output(bytes)));
                    }
                }
                Some(process_event::Event::End(end)) => {
                    self.ended = true;
                    let how = match end.error {
                        Some(error) if !error.is_empty() => error,
                        _ if !end.status.is_empty() => end.status,
                        _ => format!("exit status {}", end.exit_code),
                    };
                    return Ok(Some(Event::Exited(how)));
                }
                Some(_) => {}
                None => {
                    self.ended = true;
                    return Err(PtyError::Stream(
                        "the agent closed the stream before the shell ended".to_owned(),
                    ));
                }
            }
        }
        Ok(None)
    }

    /// Types `bytes` into the terminal.
    pub async fn input(&mut self, bytes: Bytes) -> Result<(), PtyError> {
        let request = SendInputRequest {
            process: Some(self.selector()),
            input: Some(ProcessInput {
                input: Some(process_input::Input::Pty(bytes)),
            }),
        };
        self.unary("SendInput", &request).await
    }

    /// Makes the terminal `size` big (the shell gets SIGWINCH).
    pub async fn resize(&mut self, size: Size) -> Result<(), PtyError> {
        let request = UpdateRequest {
            process: Some(self.selector()),
            pty: Some(size.clamped().spec()),
        };
        self.unary("Update", &request).await
    }

    /// Kills the shell unless it ended already (a closed browser tab leaves nothing behind).
    pub async fn kill(&mut self) -> Result<(), PtyError> {
        if self.ended {
            return Ok(());
        }
        let request = SendSignalRequest {
            process: Some(self.selector()),
            signal: Signal::Sigkill as i32,
        };
        self.unary("SendSignal", &request).await
    }

    fn selector(&self) -> ProcessSelector {
        ProcessSelector {
            selector: Some(process_selector::Selector::Pid(self.pid)),
        }
    }

    /// A unary call on the control connection, made again once if the agent closed it.
    async fn unary<M: Wire>(&mut self, call: &'static str, message: &M) -> Result<(), PtyError> {
        let body = Codec::Json.encode(message);
        let mut sender = match self.control.take() {
            Some(mut sender) => match sender.ready().await {
                Ok(()) => sender,
                Err(_) => agent_link::connect(&self.agent).await?,
            },
            None => agent_link::connect(&self.agent).await?,
        };
        let response = sender
            .send_request(rpc(call, &self.token, "application/json", body)?)
            .await
            .map_err(LinkError::from)?;
        let status = response.status();
        if !status.is_success() {
            return Err(refusal(call, response).await);
        }
        // The answer is read whole so that the connection can carry the next call.
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| PtyError::Stream(e.to_string()))?;
        self.control = Some(sender);
        Ok(())
    }

    /// The next message of the event stream; `None` when it ended without an error.
    async fn next_message(&mut self) -> Result<Option<process_event::Event>, PtyError> {
        loop {
            while let Some(frame) = self
                .decoder
                .next_frame()
                .map_err(|e| PtyError::Stream(e.message))?
            {
                if frame.is_end_stream() {
                    return match connect::parse_end_stream(&frame.payload) {
                        Ok(None) => Ok(None),
                        Ok(Some(err)) | Err(err) => Err(PtyError::Stream(err.message)),
                    };
                }
                let message: StartResponse = Codec::Json
                    .decode(&frame.payload)
                    .map_err(|e| PtyError::Stream(e.message))?;
                if let Some(event) = message.event.and_then(|e| e.event) {
                    return Ok(Some(event));
                }
            }
            match self.events.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(err)) => return Err(PtyError::Stream(err.to_string())),
                None => return Ok(None),
            }
        }
    }
}

/// A Connect call of `process.Process` as the terminal's user.
fn rpc(
    call: &str,
    token: &str,
    content_type: &'static str,
    body: Bytes,
) -> Result<http::Request<Body>, PtyError> {
    let user = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:"));
    http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/process.Process/{call}"))
        .header(header::HOST, "agent")
        .header(header::CONTENT_TYPE, content_type)
        .header("connect-protocol-version", "1")
        .header("x-access-token", token)
        .header(header::AUTHORIZATION, format!("Basic {user}"))
        .body(Body::from(body))
        .map_err(|e| PtyError::Stream(e.to_string()))
}

/// The agent's reason for refusing a call.
async fn refusal(call: &'static str, response: http::Response<hyper::body::Incoming>) -> PtyError {
    let message = crate::agent_exec::refusal_message(response).await;
    PtyError::Refused { call, message }
}
