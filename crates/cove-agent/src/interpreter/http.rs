//! The code interpreter's HTTP API, as E2B's `e2b-code-interpreter` SDKs call it:
//! `POST /execute` (JSON lines), `/contexts` (create, list), `DELETE /contexts/{id}`,
//! `POST /contexts/{id}/restart`, `GET /health`. Errors are plain text, as E2B's are.

use std::{collections::BTreeMap, path::PathBuf};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::ReceiverStream;

use super::{Interpreter, InterpreterError, context, kernelspec::normalize_language};

/// Output lines queued for a slow client before the execution waits for it.
const OUTPUT_QUEUE: usize = 64;

pub fn router<S: Clone + Send + Sync + 'static>(interpreter: Interpreter) -> Router<S> {
    Router::new()
        .route("/health", get(health))
        .route("/execute", post(execute))
        .route("/contexts", get(list).post(create))
        .route("/contexts/{id}", delete(remove))
        .route("/contexts/{id}/restart", post(restart))
        .route(cove_proto::envd::INTERPRETER_WARM, post(warm))
        .with_state(interpreter)
}

/// Cove's own: starts the default Python kernel ahead of use and answers once it is ready.
async fn warm(State(interpreter): State<Interpreter>) -> Result<StatusCode, InterpreterError> {
    interpreter.warm().await?;
    Ok(StatusCode::NO_CONTENT)
}

impl IntoResponse for InterpreterError {
    fn into_response(self) -> Response {
        let status = match &self {
            InterpreterError::NoContext(_) => StatusCode::NOT_FOUND,
            InterpreterError::NoKernel { .. }
            | InterpreterError::BadCwd(_)
            | InterpreterError::BadRequest(_) => StatusCode::BAD_REQUEST,
            InterpreterError::Kernel(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(err = %self, "code interpreter request failed");
        }
        (status, self.to_string()).into_response()
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, InterpreterError> {
    serde_json::from_slice(body)
        .map_err(|err| InterpreterError::BadRequest(format!("invalid request body: {err}")))
}

async fn health() -> Json<&'static str> {
    Json("OK")
}

/// A context as listed and created.
#[derive(Serialize)]
struct ContextView {
    id: String,
    language: String,
    cwd: String,
}

impl From<&context::Context> for ContextView {
    fn from(context: &context::Context) -> Self {
        Self {
            id: context.id.clone(),
            language: context.language.clone(),
            cwd: context.cwd.to_string_lossy().into_owned(),
        }
    }
}

#[derive(Deserialize, Default)]
struct CreateContext {
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    cwd: Option<String>,
}

async fn create(
    State(interpreter): State<Interpreter>,
    body: Bytes,
) -> Result<Json<ContextView>, InterpreterError> {
    let request: CreateContext = if body.iter().all(u8::is_ascii_whitespace) {
        CreateContext::default()
    } else {
        parse(&body)?
    };
    let language = normalize_language(request.language.as_deref());
    let cwd = request.cwd.filter(|c| !c.is_empty()).map(PathBuf::from);
    let context = interpreter.create(&language, cwd).await?;
    Ok(Json(ContextView::from(&*context)))
}

async fn list(State(interpreter): State<Interpreter>) -> Json<Vec<ContextView>> {
    Json(
        interpreter
            .list()
            .iter()
            .map(|c| ContextView::from(&**c))
            .collect(),
    )
}

/// E2B's interpreter answers both with 200 and a JSON `null` (its handlers return None).
async fn remove(
    State(interpreter): State<Interpreter>,
    Path(id): Path<String>,
) -> Result<Json<()>, InterpreterError> {
    interpreter.remove(&id).await?;
    Ok(Json(()))
}

async fn restart(
    State(interpreter): State<Interpreter>,
    Path(id): Path<String>,
) -> Result<Json<()>, InterpreterError> {
    interpreter.restart(&id).await?;
    Ok(Json(()))
}

#[derive(Deserialize)]
struct ExecuteRequest {
    code: String,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
}

async fn execute(
    State(interpreter): State<Interpreter>,
    body: Bytes,
) -> Result<Response, InterpreterError> {
    let request: ExecuteRequest = parse(&body)?;
    let context = match (&request.context_id, &request.language) {
        (Some(_), Some(_)) => {
            return Err(InterpreterError::BadRequest(
                "Only one of context_id or language can be provided".to_owned(),
            ));
        }
        (Some(id), None) => interpreter
            .get(id)
            .ok_or_else(|| InterpreterError::NoContext(id.clone()))?,
        (None, language) => {
            interpreter.default_context(&normalize_language(language.as_deref()))?
        }
    };
    let env_vars = request.env_vars.unwrap_or_default();
    for key in env_vars.keys() {
        context::check_env_key(&context.language, key).map_err(InterpreterError::BadRequest)?;
    }
    let slot = interpreter.ready(&context).await?;
    let run = context::Run {
        code: request.code,
        env_vars,
        sandbox_env: interpreter.sandbox_env(),
    };
    let (out, lines) = tokio::sync::mpsc::channel(OUTPUT_QUEUE);
    // The execution runs on its own: a client that goes away interrupts it but does not
    // cut it short, so the context is left idle and usable.
    tokio::spawn(async move { context.execute(slot, run, out).await });
    let body =
        ReceiverStream::new(lines).map(|line| Ok::<_, std::convert::Infallible>(line.to_line()));
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}
