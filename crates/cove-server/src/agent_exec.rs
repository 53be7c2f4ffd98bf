//! Running commands in sandboxes for the server's own purposes (a template build's steps, a
//! template's start and ready commands), through the agent's `process.Process/Start`
//! stream, as the SDKs do.

use std::{collections::HashMap, time::Duration};

use axum::body::Body;
use base64::Engine as _;
use cove_proto::{
    connect::{self, Codec, FrameDecoder},
    process::{ProcessConfig, StartRequest, StartResponse, process_event},
};
use cove_runtime::AgentEndpoint;
use http::header;
use http_body_util::BodyExt;

use crate::agent_link::{self, LinkError};

/// What to run.
#[derive(Clone, Debug)]
pub struct Command {
    /// Run through `shell -c`.
    pub line: String,
    pub shell: String,
    pub user: String,
    pub cwd: String,
    pub env: HashMap<String, String>,
    /// Killed after this long (none: it may run for ever).
    pub timeout: Option<Duration>,
}

/// How it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    /// `exit status N`, `signal: killed`, or why it did not start.
    pub status: String,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the agent refused to start the command: {0}")]
    Refused(String),
    #[error("the agent's stream broke off: {0}")]
    Stream(String),
}

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Starts `command` and returns its pid once it runs, leaving it to run on its own (the agent
/// keeps a process whose caller went away; its output is dropped).
pub async fn spawn(
    agent: &AgentEndpoint,
    token: &str,
    command: &Command,
) -> Result<u32, ExecError> {
    let mut body = start(agent, token, command).await?;
    let mut decoder = FrameDecoder::default();
    loop {
        while let Some(frame) = decoder
            .next_frame()
            .map_err(|e| ExecError::Stream(e.message))?
        {
            if frame.is_end_stream() {
                return match connect::parse_end_stream(&frame.payload) {
                    Ok(None) => Err(ExecError::Stream("the stream ended at once".to_owned())),
                    Ok(Some(err)) | Err(err) => Err(ExecError::Refused(err.message)),
                };
            }
            let message: StartResponse = Codec::Json
                .decode(&frame.payload)
                .map_err(|e| ExecError::Stream(e.message))?;
            match message.event.and_then(|e| e.event) {
                Some(process_event::Event::Start(started)) => return Ok(started.pid),
                Some(process_event::Event::End(end)) => {
                    return Err(ExecError::Refused(format!(
                        "it ended at once: exit status {}",
                        end.exit_code
                    )));
                }
                _ => {}
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(err)) => return Err(ExecError::Stream(err.to_string())),
            None => return Err(ExecError::Stream("the agent closed the stream".to_owned())),
        }
    }
}

/// Sends the `Start` call; the answer's body is the event stream.
async fn start(
    agent: &AgentEndpoint,
    token: &str,
    command: &Command,
) -> Result<hyper::body::Incoming, ExecError> {
    let request = StartRequest {
        process: Some(ProcessConfig {
            cmd: command.shell.clone(),
            args: vec!["-c".to_owned(), command.line.clone()],
            envs: command.env.clone(),
            cwd: Some(command.cwd.clone()),
        }),
        pty: None,
        tag: None,
        stdin: Some(false),
    };
    let body = connect::envelope(0, &Codec::Json.encode(&request));
    let user = base64::engine::general_purpose::STANDARD.encode(format!("{}:", command.user));
    let mut http_request = http::Request::builder()
        .method(http::Method::POST)
        .uri("/process.Process/Start")
        .header(header::HOST, "agent")
        .header(header::CONTENT_TYPE, "application/connect+json")
        .header("connect-protocol-version", "1");
    if let Some(timeout) = command.timeout {
        http_request = http_request.header("connect-timeout-ms", timeout.as_millis().to_string());
    }
    let http_request = http_request
        .header("x-access-token", token)
        .header(header::AUTHORIZATION, format!("Basic {user}"))
        .body(Body::from(body))
        .map_err(|e| ExecError::Refused(e.to_string()))?;
    let mut sender = agent_link::connect(agent).await?;
    let response = sender
        .send_request(http_request)
        .await
        .map_err(LinkError::from)?;
    if !response.status().is_success() {
        return Err(ExecError::Refused(refusal_message(response).await));
    }
    Ok(response.into_body())
}

/// Why the agent refused an RPC: the message of its Connect error, else the HTTP status.
pub async fn refusal_message(response: http::Response<hyper::body::Incoming>) -> String {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    connect::RpcError::from_json(&body)
        .map(|e| e.message)
        .unwrap_or_else(|| format!("HTTP {status}"))
}

/// Runs `command` in the sandbox behind `agent` (token `token`), handing each complete line
/// of its output to `on_line` as it comes, and returns how it ended.
pub async fn run(
    agent: &AgentEndpoint,
    token: &str,
    command: &Command,
    on_line: &mut (dyn FnMut(Stream, &str) + Send),
) -> Result<Exit, ExecError> {
    let mut body = start(agent, token, command).await?;
    let mut decoder = FrameDecoder::default();
    let mut lines = Lines::default();
    loop {
        while let Some(frame) = decoder
            .next_frame()
            .map_err(|e| ExecError::Stream(e.message))?
        {
            if frame.is_end_stream() {
                lines.flush(on_line);
                return match connect::parse_end_stream(&frame.payload) {
                    Ok(None) => Err(ExecError::Stream(
                        "the stream ended before the command did".to_owned(),
                    )),
                    Ok(Some(err)) | Err(err) => Err(ExecError::Refused(err.message)),
                };
            }
            let message: StartResponse = Codec::Json
                .decode(&frame.payload)
                .map_err(|e| ExecError::Stream(e.message))?;
            let Some(event) = message.event.and_then(|e| e.event) else {
                continue;
            };
            match event {
                process_event::Event::Data(data) => match data.output {
                    Some(process_event::data_event::Output::Stdout(bytes)) => {
                        lines.push(Stream::Stdout, &bytes, on_line)
                    }
                    Some(process_event::data_event::Output::Stderr(bytes)) => {
                        lines.push(Stream::Stderr, &bytes, on_line)
                    }
                    _ => {}
                },
                process_event::Event::End(end) => {
                    lines.flush(on_line);
                    let status = match (&end.error, end.status.is_empty()) {
                        (Some(error), _) if !error.is_empty() => error.clone(),
                        (_, false) => end.status.clone(),
                        _ => format!("exit status {}", end.exit_code),
                    };
                    return Ok(Exit {
                        code: end.exit_code,
                        status,
                    });
                }
                _ => {}
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                }
            }
            Some(Err(err)) => return Err(ExecError::Stream(err.to_string())),
            None => {
                return Err(ExecError::Stream(
                    "the agent closed the stream before the command ended".to_owned(),
                ));
            }
        }
    }
}

/// Output cut into lines per stream (a line may arrive in pieces).
#[derive(Default)]
struct Lines {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Longest line handed on; longer ones are cut.
const MAX_LINE: usize = 8 << 10;

impl Lines {
    fn push(
        &mut self,
        stream: Stream,
        bytes: &[u8],
        on_line: &mut (dyn FnMut(Stream, &str) + Send),
    ) {
        let buffer = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        for &byte in bytes {
            // Carriage returns (progress bars) end a line too.
            if byte == b'\n' || byte == b'\r' {
                emit(stream, buffer, on_line);
            } else if buffer.len() < MAX_LINE {
                buffer.push(byte);
            }
        }
    }

    fn flush(&mut self, on_line: &mut (dyn FnMut(Stream, &str) + Send)) {
        emit(Stream::Stdout, &mut self.stdout, on_line);
        emit(Stream::Stderr, &mut self.stderr, on_line);
    }
}

fn emit(stream: Stream, buffer: &mut Vec<u8>, on_line: &mut (dyn FnMut(Stream, &str) + Send)) {
    if !buffer.is_empty() {
        let line = String::from_utf8_lossy(buffer);
        let line = line.trim_end();
        if !line.is_empty() {
            on_line(stream, line);
        }
    }
    buffer.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_lines_per_stream() {
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        let mut collect = |s: Stream, l: &str| seen.push((s, l.to_owned()));
        lines.push(Stream::Stdout, b"hel", &mut collect);
        lines.push(Stream::Stderr, b"oops\n", &mut collect);
        lines.push(Stream::Stdout, b"lo\n50%\r100%\n\ntail", &mut collect);
        lines.flush(&mut collect);
        assert_eq!(
            seen,
            vec![
                (Stream::Stderr, "oops".to_owned()),
                (Stream::Stdout, "hello".to_owned()),
                (Stream::Stdout, "50%".to_owned()),
                (Stream::Stdout, "100%".to_owned()),
                (Stream::Stdout, "tail".to_owned()),
            ]
        );
    }
}
