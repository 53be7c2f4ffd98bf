//! A sandbox's processes: run to completion, or spawn and drive (stdin, signals, terminal).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use cove_proto::process::{
    self as wire, CloseStdinRequest, CloseStdinResponse, ConnectRequest, ConnectResponse,
    ListRequest, ListResponse, ProcessConfig, ProcessInput, ProcessSelector, SendInputRequest,
    SendInputResponse, SendSignalRequest, SendSignalResponse, StartRequest, StartResponse,
    UpdateRequest, UpdateResponse,
    process_event::{Event, data_event},
    process_input, process_selector,
};
use futures::{Stream, StreamExt, stream::BoxStream};

use crate::{
    agent::AgentClient,
    error::{CommandExit, Error, Result},
    rpc::END_OF_BODY_WAIT,
};

const SERVICE: &str = "process.Process";

/// A process to start.
#[derive(Clone, Debug, Default)]
pub struct Command {
    cmd: String,
    args: Vec<String>,
    envs: HashMap<String, String>,
    cwd: Option<String>,
    stdin: bool,
    pty: Option<(u32, u32)>,
    tag: Option<String>,
    timeout: Option<Duration>,
}

impl Command {
    /// Runs `program` with no arguments yet.
    pub fn new(program: impl Into<String>) -> Self {
        Self {
            cmd: program.into(),
            ..Self::default()
        }
    }

    /// Runs `line` in a bash login shell, as the E2B SDKs do.
    pub fn shell(line: impl Into<String>) -> Self {
        Self::new("/bin/bash").args(["-l", "-c"]).arg(line)
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.insert(key.into(), value.into());
        self
    }

    /// Working directory (default: the sandbox's workdir, else the user's home).
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Keeps stdin open for [`Commands::send_stdin`].
    pub fn stdin(mut self, open: bool) -> Self {
        self.stdin = open;
        self
    }

    /// Runs on a pseudo-terminal of this size; output then arrives as [`Output::Pty`].
    pub fn pty(mut self, cols: u32, rows: u32) -> Self {
        self.pty = Some((cols, rows));
        self
    }

    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Kills the process when this much time has passed (none: it may run for ever).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Output of a process, as it arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    Pty(Bytes),
}

/// What a finished command left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// `exit status N` / `signal: killed` for an unsuccessful end.
    pub error: Option<String>,
}

/// A process the agent knows about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub tag: Option<String>,
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: HashMap<String, String>,
    pub cwd: Option<String>,
}

/// A running (or just ended) process: a [`Stream`] of its [`Output`] that ends when the
/// process does, and the calls that drive it (stdin, signals, terminal size).
///
/// ```
/// # use cove_sdk::{Command, Output, Sandbox, CreateOptions};
/// # use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
/// # let server = cove_test_util::TestServer::for_doctest().await;
/// # let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
/// let mut handle = sandbox.commands().spawn(Command::new("cat").stdin(true)).await?;
/// handle.send_stdin("typed in\n").await?;
/// handle.close_stdin().await?;
/// let mut echoed = Vec::new();
/// while let Some(output) = handle.next().await {
///     if let Output::Stdout(bytes) = output? {
///         echoed.extend_from_slice(&bytes);
///     }
/// }
/// assert_eq!(echoed, b"typed in\n");
/// assert_eq!(handle.exit_code(), Some(0));
/// # sandbox.kill().await?;
/// # Ok(())
/// # }
/// ```
pub struct CommandHandle {
    pid: u32,
    agent: AgentClient,
    events: BoxStream<'static, Result<Option<Event>>>,
    end: Option<wire::process_event::EndEvent>,
    /// After the end event, how long the rest of the stream (its end-of-stream message) may
    /// still take; read, it lets the connection be used again.
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Nothing more comes: the stream ended, failed, or was given up after the end event.
    done: bool,
}

impl std::fmt::Debug for CommandHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandHandle")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl CommandHandle {
    async fn open(
        agent: AgentClient,
        events: BoxStream<'static, Result<Option<Event>>>,
    ) -> Result<Self> {
        let mut handle = Self {
            pid: 0,
            agent,
            events,
            end: None,
            closing: None,
            done: false,
        };
        match handle.events.next().await {
            Some(Ok(Some(Event::Start(start)))) => handle.pid = start.pid,
            Some(Err(err)) => return Err(err),
            _ => {
                return Err(Error::Protocol(
                    "the process stream did not begin with a start event".to_owned(),
                ));
            }
        }
        Ok(handle)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit code, once the stream has reported the end (`-1`: killed by a signal).
    pub fn exit_code(&self) -> Option<i32> {
        self.end.as_ref().map(|end| end.exit_code)
    }

    /// How the process ended when it did not succeed (`exit status 3`, `signal: killed`).
    pub fn exit_error(&self) -> Option<&str> {
        self.end.as_ref().and_then(|end| end.error.as_deref())
    }

    /// The next piece of output; `None` once the process has ended.
    pub async fn next_output(&mut self) -> Result<Option<Output>> {
        self.next().await.transpose()
    }

    /// Waits for the end, collecting the output not yet taken from the stream. A non-zero
    /// exit is [`Error::CommandExit`], carrying the output and the code.
    pub async fn wait(mut self) -> Result<CommandOutput> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(output) = self.next().await {
            match output? {
                Output::Stdout(b) | Output::Pty(b) => stdout.extend_from_slice(&b),
                Output::Stderr(b) => stderr.extend_from_slice(&b),
            }
        }
        let end = self.end.unwrap_or_default();
        let output = CommandOutput {
            exit_code: end.exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            error: end.error,
        };
        if output.exit_code == 0 {
            Ok(output)
        } else {
            Err(Error::CommandExit(Box::new(CommandExit {
                exit_code: output.exit_code,
                error: output.error,
                stdout: output.stdout,
                stderr: output.stderr,
            })))
        }
    }

    /// Writes to the process's stdin (it must have been started with `stdin(true)`).
    pub async fn send_stdin(&self, data: impl Into<Bytes>) -> Result<()> {
        self.agent.commands().send_stdin(self.pid, data).await
    }

    /// Closes the process's stdin (end of input).
    pub async fn close_stdin(&self) -> Result<()> {
        self.agent.commands().close_stdin(self.pid).await
    }

    /// Sends SIGTERM or SIGKILL.
    pub async fn signal(&self, signal: Signal) -> Result<()> {
        self.agent.commands().signal(self.pid, signal).await
    }

    /// Sends SIGKILL; `false` when the process was already gone.
    pub async fn kill(&self) -> Result<bool> {
        self.agent.commands().kill(self.pid).await
    }

    /// Types into the process's terminal (it must have been started with a pty).
    pub async fn send_pty(&self, data: impl Into<Bytes>) -> Result<()> {
        self.agent.commands().send_pty(self.pid, data).await
    }

    /// Resizes the process's terminal.
    pub async fn resize(&self, cols: u32, rows: u32) -> Result<()> {
        self.agent.commands().resize(self.pid, cols, rows).await
    }
}

impl Stream for CommandHandle {
    type Item = Result<Output>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if let Some(closing) = &mut this.closing {
                // The process has ended: only the stream's own end is left to read, and
                // whatever else comes is dropped. It is given up after a while, which costs
                // nothing but the connection.
                let rest = match this.events.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(_) => Poll::Ready(()),
                    Poll::Pending => closing.as_mut().poll(cx),
                };
                ready!(rest);
                this.done = true;
                return Poll::Ready(None);
            }
            match ready!(this.events.poll_next_unpin(cx)) {
                Some(Ok(Some(Event::Data(data)))) => {
                    let output = match data.output {
                        Some(data_event::Output::Stdout(b)) => Output::Stdout(b),
                        Some(data_event::Output::Stderr(b)) => Output::Stderr(b),
                        Some(data_event::Output::Pty(b)) => Output::Pty(b),
                        None => continue,
                    };
                    return Poll::Ready(Some(Ok(output)));
                }
                Some(Ok(Some(Event::End(end)))) => {
                    this.end = Some(end);
                    this.closing = Some(Box::pin(tokio::time::sleep(END_OF_BODY_WAIT)));
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(err)));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::Protocol(
                        "the process stream ended without an end event".to_owned(),
                    ))));
                }
            }
        }
    }
}

/// The processes API of one sandbox.
#[derive(Debug)]
pub struct Commands<'a> {
    agent: &'a AgentClient,
}

fn pid_selector(pid: u32) -> Option<ProcessSelector> {
    Some(ProcessSelector {
        selector: Some(process_selector::Selector::Pid(pid)),
    })
}

impl<'a> Commands<'a> {
    pub(crate) fn new(agent: &'a AgentClient) -> Self {
        Self { agent }
    }

    async fn call<Req: cove_proto::connect::Wire, Resp: cove_proto::connect::Wire>(
        &self,
        method: &str,
        request: Req,
    ) -> Result<Resp> {
        self.agent.call(SERVICE, method, request).await
    }

    /// Runs a shell command line (`bash -l -c LINE`) to completion, with a 60 s limit as the
    /// E2B SDKs. A non-zero exit is [`Error::CommandExit`], which carries the code and output.
    ///
    /// ```
    /// # use cove_sdk::{CreateOptions, Error, Sandbox};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
    /// # let server = cove_test_util::TestServer::for_doctest().await;
    /// # let sandbox = Sandbox::create(&server.config(), CreateOptions::default()).await?;
    /// let output = sandbox.commands().run("echo hello; echo oops >&2").await?;
    /// assert_eq!((output.stdout.as_str(), output.stderr.as_str()), ("hello\n", "oops\n"));
    ///
    /// match sandbox.commands().run("echo partial; exit 3").await {
    ///     Err(Error::CommandExit(exit)) => {
    ///         assert_eq!((exit.exit_code, exit.stdout.as_str()), (3, "partial\n"));
    ///     }
    ///     other => panic!("expected a non-zero exit, got {other:?}"),
    /// }
    /// # sandbox.kill().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run(&self, line: &str) -> Result<CommandOutput> {
        self.spawn(Command::shell(line).timeout(Duration::from_secs(60)))
            .await?
            .wait()
            .await
    }

    /// Runs `command` to completion (no time limit unless it sets one); errors as [`Commands::run`].
    pub async fn run_command(&self, command: Command) -> Result<CommandOutput> {
        self.spawn(command).await?.wait().await
    }

    /// Starts a process and returns once the agent reports its pid.
    pub async fn spawn(&self, command: Command) -> Result<CommandHandle> {
        let request = StartRequest {
            process: Some(ProcessConfig {
                cmd: command.cmd,
                args: command.args,
                envs: command.envs,
                cwd: command.cwd,
            }),
            pty: command.pty.map(|(cols, rows)| wire::Pty {
                size: Some(wire::pty::Size { cols, rows }),
            }),
            tag: command.tag,
            stdin: Some(command.stdin),
        };
        self.attach("Start", request, command.timeout, |m: StartResponse| {
            m.event.and_then(|e| e.event)
        })
        .await
    }

    /// Re-attaches to a running (or recently ended) process.
    pub async fn connect(&self, pid: u32) -> Result<CommandHandle> {
        let request = ConnectRequest {
            process: pid_selector(pid),
        };
        self.attach("Connect", request, None, |m: ConnectResponse| {
            m.event.and_then(|e| e.event)
        })
        .await
    }

    /// Follows the event stream `method` answers (Start and Connect differ only in their
    /// message's type).
    async fn attach<Req: cove_proto::connect::Wire, Resp: cove_proto::connect::Wire>(
        &self,
        method: &str,
        request: Req,
        timeout: Option<Duration>,
        event: fn(Resp) -> Option<Event>,
    ) -> Result<CommandHandle> {
        let stream = self
            .agent
            .channel
            .server_stream::<_, Resp>(&format!("{SERVICE}/{method}"), &request, timeout)
            .await?;
        CommandHandle::open(
            self.agent.clone(),
            stream.map(move |m| m.map(event)).boxed(),
        )
        .await
    }

    /// Running processes.
    pub async fn list(&self) -> Result<Vec<ProcessInfo>> {
        let response: ListResponse = self.call("List", ListRequest {}).await?;
        Ok(response
            .processes
            .into_iter()
            .map(|p| {
                let config = p.config.unwrap_or_default();
                ProcessInfo {
                    pid: p.pid,
                    tag: p.tag,
                    cmd: config.cmd,
                    args: config.args,
                    envs: config.envs,
                    cwd: config.cwd,
                }
            })
            .collect())
    }

    async fn send_input(&self, pid: u32, input: process_input::Input) -> Result<()> {
        let _: SendInputResponse = self
            .call(
                "SendInput",
                SendInputRequest {
                    process: pid_selector(pid),
                    input: Some(ProcessInput { input: Some(input) }),
                },
            )
            .await?;
        Ok(())
    }

    /// Writes to a process's stdin (it must have been started with `stdin(true)`).
    pub async fn send_stdin(&self, pid: u32, data: impl Into<Bytes>) -> Result<()> {
        self.send_input(pid, process_input::Input::Stdin(data.into()))
            .await
    }

    /// Types into a process's terminal.
    pub async fn send_pty(&self, pid: u32, data: impl Into<Bytes>) -> Result<()> {
        self.send_input(pid, process_input::Input::Pty(data.into()))
            .await
    }

    /// Closes a process's stdin (end of input).
    pub async fn close_stdin(&self, pid: u32) -> Result<()> {
        let _: CloseStdinResponse = self
            .call(
                "CloseStdin",
                CloseStdinRequest {
                    process: pid_selector(pid),
                },
            )
            .await?;
        Ok(())
    }

    /// Sends SIGKILL; `false` when there is no such process.
    pub async fn kill(&self, pid: u32) -> Result<bool> {
        crate::error::found(self.signal(pid, wire::Signal::Sigkill).await)
    }

    /// Sends SIGTERM or SIGKILL.
    pub async fn signal(&self, pid: u32, signal: wire::Signal) -> Result<()> {
        let _: SendSignalResponse = self
            .call(
                "SendSignal",
                SendSignalRequest {
                    process: pid_selector(pid),
                    signal: signal as i32,
                },
            )
            .await?;
        Ok(())
    }

    /// Resizes a process's terminal.
    pub async fn resize(&self, pid: u32, cols: u32, rows: u32) -> Result<()> {
        let _: UpdateResponse = self
            .call(
                "Update",
                UpdateRequest {
                    process: pid_selector(pid),
                    pty: Some(wire::Pty {
                        size: Some(wire::pty::Size { cols, rows }),
                    }),
                },
            )
            .await?;
        Ok(())
    }
}

pub use wire::Signal;

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Instant,
    };

    use cove_proto::connect::{self, Codec};
    use cove_proto::process::{
        ProcessEvent, StartResponse,
        process_event::{EndEvent, StartEvent},
    };
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// How the stand-in agent ends each process stream.
    #[derive(Clone, Copy)]
    enum Ending {
        /// The end-of-stream message and the end of the body a little after the end event.
        Late,
        /// Nothing after the end event: the body stays open.
        Never,
    }

    fn chunk(bytes: &[u8]) -> Vec<u8> {
        let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
        out
    }

    fn event(event: Event) -> Vec<u8> {
        let message = StartResponse {
            event: Some(ProcessEvent { event: Some(event) }),
        };
        chunk(&connect::envelope(0, &Codec::Proto.encode(&message)))
    }

    /// Reads more of `stream` into `buffer`; `false` once the client is gone.
    async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
        let mut more = [0u8; 4096];
        match stream.read(&mut more).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buffer.extend_from_slice(&more[..n]);
                true
            }
        }
    }

    /// Answers every request on `stream` (HTTP/1.1, kept alive) with a process that ends.
    async fn answer(mut stream: TcpStream, ending: Ending) {
        let mut buffer = Vec::new();
        loop {
            // The head, then as many bytes of body as it announces.
            let head_end = loop {
                if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                if !read_more(&mut stream, &mut buffer).await {
                    return;
                }
            };
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buffer.len() < head_end + length {
                if !read_more(&mut stream, &mut buffer).await {
                    return;
                }
            }
            buffer.drain(..head_end + length);
            let mut answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/connect+proto\r\n\
                transfer-encoding: chunked\r\n\r\n"
                .to_vec();
            answer.extend(event(Event::Start(StartEvent { pid: 7 })));
            answer.extend(event(Event::End(EndEvent {
                exited: true,
                status: "exit status 0".into(),
                ..EndEvent::default()
            })));
            stream.write_all(&answer).await.unwrap();
            match ending {
                Ending::Late => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let mut rest = chunk(&connect::end_stream(None));
                    rest.extend_from_slice(b"0\r\n\r\n");
                    stream.write_all(&rest).await.unwrap();
                }
                Ending::Never => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
            }
        }
    }

    /// A stand-in agent on a free port: its URL and how many connections it accepted.
    async fn agent(ending: Ending) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(stream, ending));
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn commands_one_after_the_other_share_one_connection() {
        let (url, accepted) = agent(Ending::Late).await;
        let client = AgentClient::http(&url).unwrap();
        for _ in 0..5 {
            let output = client.commands().run("true").await.unwrap();
            assert_eq!(output.exit_code, 0);
            let handle = client.commands().spawn(Command::new("true")).await.unwrap();
            let output = handle.wait().await.unwrap();
            assert_eq!(output.exit_code, 0);
        }
        // A stream left before the end of its body would close its connection, and each
        // command would open a new one.
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stream_left_open_after_the_end_event_is_given_up() {
        let (url, accepted) = agent(Ending::Never).await;
        let client = AgentClient::http(&url).unwrap();
        let started = Instant::now();
        let output = client.commands().run("true").await.unwrap();
        assert_eq!(output.exit_code, 0);
        assert!(started.elapsed() < END_OF_BODY_WAIT + Duration::from_secs(5));
        // That connection cannot be used again; the next command gets another.
        client.commands().run("true").await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
