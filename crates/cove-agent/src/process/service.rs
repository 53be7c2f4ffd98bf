//! `process.Process`: the RPC handlers.

use std::sync::Arc;

use axum::Router;
use cove_proto::{
    connect::{Code, RpcError},
    process::{
        CloseStdinRequest, CloseStdinResponse, ConnectRequest, ConnectResponse, ListRequest,
        ListResponse, ProcessEvent, SendInputRequest, SendInputResponse, SendSignalRequest,
        SendSignalResponse, Signal, StartRequest, StartResponse, StreamInputRequest,
        StreamInputResponse, UpdateRequest, UpdateResponse,
        process_event::{self, KeepAlive, StartEvent},
        process_input::Input as InputKind,
        stream_input_request,
    },
};
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::{Attachment, Event, Process, StartSpec, output, spawn::Input};
use crate::{
    AgentState, paths,
    rpc::{self, Call, MessageStream},
};

pub fn routes() -> Router<AgentState> {
    Router::new()
        .route("/process.Process/Start", rpc::server_stream(start))
        .route("/process.Process/Connect", rpc::server_stream(connect))
        .route("/process.Process/List", rpc::unary(list))
        .route("/process.Process/SendInput", rpc::unary(send_input))
        .route(
            "/process.Process/StreamInput",
            rpc::client_stream(stream_input),
        )
        .route("/process.Process/CloseStdin", rpc::unary(close_stdin))
        .route("/process.Process/SendSignal", rpc::unary(send_signal))
        .route("/process.Process/Update", rpc::unary(update))
}

async fn start(
    state: AgentState,
    call: Call,
    request: StartRequest,
) -> Result<MessageStream<StartResponse>, RpcError> {
    let config = request
        .process
        .ok_or_else(|| RpcError::invalid_argument("the process to start is missing"))?;
    if config.cmd.is_empty() {
        return Err(RpcError::invalid_argument("the command to start is empty"));
    }
    let user = call.caller.user.clone();
    let workdir = state.defaults().workdir();
    let cwd = paths::resolve(
        config.cwd.as_deref().unwrap_or(""),
        &user,
        workdir.as_deref(),
    )
    .map_err(|err| RpcError::invalid_argument(err.to_string()))?;
    if !cwd.is_dir() {
        return Err(RpcError::invalid_argument(format!(
            "cwd '{}' does not exist or is not a directory",
            cwd.display()
        )));
    }
    let mut env = state.defaults().env();
    env.extend(config.envs.clone());
    let pty = request.pty.map(|pty| {
        let size = pty.size.unwrap_or_default();
        (clamp_u16(size.cols, 80), clamp_u16(size.rows, 24))
    });
    let spec = StartSpec {
        cmd: config.cmd.clone(),
        args: config.args.clone(),
        user,
        cwd,
        env,
        pty,
        stdin: request.stdin.unwrap_or(true),
    };
    let table = state.processes();
    let started = spec.spawn(&table.reaper)?;
    let process = Arc::new(Process::new(
        started.pid,
        config,
        request.tag,
        started.input,
    ));
    // Attach before the output task runs, so the caller sees every byte.
    let attachment = process.attach();
    table.insert(process.clone());
    tokio::spawn(output::follow(
        state.clone(),
        process.clone(),
        started.output,
        started.exit,
        call.timeout,
    ));
    tracing::debug!(pid = process.pid, cmd = %process.config.cmd, "process started");
    let events = event_stream(process.pid, attachment, &call);
    Ok(events
        .map(|event| event.map(|event| StartResponse { event: Some(event) }))
        .boxed())
}

async fn connect(
    state: AgentState,
    call: Call,
    request: ConnectRequest,
) -> Result<MessageStream<ConnectResponse>, RpcError> {
    let selector = request.process.as_ref();
    let (pid, attachment) = match state.processes().get(selector) {
        Ok(process) => (process.pid, process.attach()),
        Err(err) => match state.processes().get_ended(selector) {
            Some((pid, end)) => (pid, Attachment::Ended(end)),
            None => return Err(err),
        },
    };
    let events = event_stream(pid, attachment, &call);
    Ok(events
        .map(|event| event.map(|event| ConnectResponse { event: Some(event) }))
        .boxed())
}

/// `start`, then the process's events, with keepalives while idle, bounded by the call's
/// deadline.
fn event_stream(pid: u32, attachment: Attachment, call: &Call) -> MessageStream<ProcessEvent> {
    let start = futures::stream::once(async move { Ok(Event::Start(StartEvent { pid })) });
    let rest: MessageStream<Event> = match attachment {
        Attachment::Live(rx) => ReceiverStream::new(rx).map(Ok).boxed(),
        Attachment::Ended(end) => futures::stream::once(async move { Ok(Event::End(end)) }).boxed(),
    };
    let events = rpc::with_keepalive(start.chain(rest).boxed(), call.keepalive, || {
        process_event::Event::Keepalive(KeepAlive {})
    });
    rpc::with_deadline(events, call.timeout)
        .map(|event| event.map(|event| ProcessEvent { event: Some(event) }))
        .boxed()
}

async fn list(
    state: AgentState,
    _call: Call,
    _request: ListRequest,
) -> Result<ListResponse, RpcError> {
    Ok(ListResponse {
        processes: state.processes().list(),
    })
}

async fn send_input(
    state: AgentState,
    _call: Call,
    request: SendInputRequest,
) -> Result<SendInputResponse, RpcError> {
    let process = state.processes().get(request.process.as_ref())?;
    let input = request
        .input
        .and_then(|i| i.input)
        .ok_or_else(|| RpcError::invalid_argument("the input is missing"))?;
    write_input(&process, input).await?;
    Ok(SendInputResponse {})
}

async fn stream_input(
    state: AgentState,
    _call: Call,
    mut requests: MessageStream<StreamInputRequest>,
) -> Result<StreamInputResponse, RpcError> {
    let mut process: Option<Arc<Process>> = None;
    while let Some(request) = requests.next().await {
        match request?.event {
            Some(stream_input_request::Event::Start(start)) => {
                process = Some(state.processes().get(start.process.as_ref())?);
            }
            Some(stream_input_request::Event::Data(data)) => {
                let target = process.as_ref().ok_or_else(|| {
                    RpcError::invalid_argument("the first message must select the process")
                })?;
                if let Some(input) = data.input.and_then(|i| i.input) {
                    write_input(target, input).await?;
                }
            }
            Some(stream_input_request::Event::Keepalive(_)) | None => {}
        }
    }
    Ok(StreamInputResponse {})
}

async fn write_input(process: &Process, input: InputKind) -> Result<(), RpcError> {
    // A process that has closed its end (or has just ended, before the reaper took it off
    // the table) is the caller's race to lose, not the agent's failure.
    let failed = |err: std::io::Error| match rustix::io::Errno::from_io_error(&err) {
        Some(rustix::io::Errno::PIPE | rustix::io::Errno::IO) => RpcError::new(
            Code::FailedPrecondition,
            format!(
                "process {} no longer reads its input (it closed it or has ended)",
                process.pid
            ),
        ),
        _ => RpcError::internal(format!("cannot write to process {}: {err}", process.pid)),
    };
    match (&process.input, input) {
        (Input::Pipe(stdin), InputKind::Stdin(data)) => {
            let sender = stdin
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .ok_or_else(|| {
                    RpcError::new(
                        Code::FailedPrecondition,
                        format!(
                            "stdin of process {} is closed or was not requested",
                            process.pid
                        ),
                    )
                })?;
            write_pipe(&sender, &data).await.map_err(failed)
        }
        (Input::Pty(pty), InputKind::Pty(data)) => pty.write_all(&data).await.map_err(failed),
        (Input::Pty(_), InputKind::Stdin(_)) => Err(RpcError::new(
            Code::FailedPrecondition,
            format!(
                "process {} has a terminal: send pty input, not stdin",
                process.pid
            ),
        )),
        (Input::Pipe(_), InputKind::Pty(_)) => Err(RpcError::new(
            Code::FailedPrecondition,
            format!(
                "process {} has no terminal: send stdin input, not pty",
                process.pid
            ),
        )),
    }
}

async fn write_pipe(pipe: &tokio::net::unix::pipe::Sender, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        pipe.writable().await?;
        match pipe.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

async fn close_stdin(
    state: AgentState,
    _call: Call,
    request: CloseStdinRequest,
) -> Result<CloseStdinResponse, RpcError> {
    let process = state.processes().get(request.process.as_ref())?;
    match &process.input {
        Input::Pipe(stdin) => {
            // Dropping our handle closes the pipe once no write is in flight.
            stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
            Ok(CloseStdinResponse {})
        }
        Input::Pty(_) => Err(RpcError::new(
            Code::FailedPrecondition,
            format!(
                "process {} has a terminal: send Ctrl-D (0x04) instead of closing stdin",
                process.pid
            ),
        )),
    }
}

async fn send_signal(
    state: AgentState,
    _call: Call,
    request: SendSignalRequest,
) -> Result<SendSignalResponse, RpcError> {
    let process = state.processes().get(request.process.as_ref())?;
    let signal = match Signal::try_from(request.signal) {
        Ok(Signal::Sigkill) => rustix::process::Signal::KILL,
        Ok(Signal::Sigterm) => rustix::process::Signal::TERM,
        _ => {
            return Err(RpcError::invalid_argument(format!(
                "unsupported signal {}: use SIGNAL_SIGKILL or SIGNAL_SIGTERM",
                request.signal
            )));
        }
    };
    process.stop(signal)?;
    Ok(SendSignalResponse {})
}

async fn update(
    state: AgentState,
    _call: Call,
    request: UpdateRequest,
) -> Result<UpdateResponse, RpcError> {
    let process = state.processes().get(request.process.as_ref())?;
    let Some(pty) = request.pty else {
        return Ok(UpdateResponse {});
    };
    let Input::Pty(terminal) = &process.input else {
        return Err(RpcError::new(
            Code::FailedPrecondition,
            format!("process {} has no terminal to resize", process.pid),
        ));
    };
    let size = pty.size.unwrap_or_default();
    terminal
        .resize(clamp_u16(size.cols, 80), clamp_u16(size.rows, 24))
        .map_err(|err| RpcError::internal(format!("cannot resize the terminal: {err}")))?;
    Ok(UpdateResponse {})
}

/// A terminal dimension: zero means the default, anything too large is capped.
fn clamp_u16(value: u32, default: u16) -> u16 {
    if value == 0 {
        default
    } else {
        u16::try_from(value).unwrap_or(u16::MAX)
    }
}
