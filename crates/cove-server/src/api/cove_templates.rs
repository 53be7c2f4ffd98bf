//! Cove's own template endpoints (under `/cove/`, which E2B's API does not use): importing an
//! image archive as a template, the disk use of the caller's templates, and collecting the
//! layers nothing uses.

use axum::{
    Json,
    body::Body,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use cove_proto::templates::{CollectedLayers, TemplateRequested, TemplateUsage};
use serde::Deserialize;

use super::{
    ApiError, ApiQuery, Team,
    templates::{Resources, prepare},
};
use crate::{AppState, build::storage::StorageError};

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Catalog(err) => err.into(),
            other => {
                tracing::error!(err = %cove_image::error_chain(&other), "template storage failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the layer store failed")
            }
        }
    }
}

/// Query of `POST /cove/templates/import`.
#[derive(Debug, Deserialize)]
pub struct ImportQuery {
    /// The template's name (`name` or `name:tag`).
    name: Option<String>,
    /// The image in the archive, when it holds several (its tag or name).
    image: Option<String>,
    /// The backend the template's sandboxes run on (none: the server's default).
    runtime: Option<String>,
}

/// `POST /cove/templates/import?name=…`: the body is an OCI layout (as a tar) or a
/// `docker save` archive; answers once the template is ready (201) or failed (400).
pub async fn import(
    State(state): State<AppState>,
    team: Team,
    ApiQuery(query): ApiQuery<ImportQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = query
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("name is missing: ?name=my-template"))?;
    let resources = Resources {
        runtime: query.runtime.as_deref(),
        ..Resources::default()
    };
    let prepared = prepare(&state, &team.0, &name, Vec::new(), resources).await?;
    let builder = state.builder();
    let upload = format!("import-{}", prepared.build.id);
    let size = builder
        .contexts()
        .store(&team.0, &upload, body)
        .await
        .map_err(|err| ApiError::bad_request(err.to_string()))?;
    let archive = builder.contexts().path(&team.0, &upload);
    tracing::info!(size, template = %prepared.template.id, "importing an image archive");
    let result = builder
        .import(
            &prepared.template,
            &prepared.build,
            &archive,
            query.image.as_deref(),
        )
        .await;
    builder.contexts().remove(&team.0, &upload);
    result.map_err(|failure| ApiError::bad_request(failure.message))?;
    Ok((
        StatusCode::CREATED,
        Json(TemplateRequested {
            template_id: prepared.template.id,
            build_id: prepared.build.id,
            public: false,
            names: vec![prepared.name.clone()],
            tags: prepared.tags,
            aliases: vec![prepared.name],
        }),
    )
        .into_response())
}

/// `GET /cove/templates/usage`: what each of the caller's templates takes on disk.
pub async fn usage(
    State(state): State<AppState>,
    team: Team,
) -> Result<Json<Vec<TemplateUsage>>, ApiError> {
    Ok(Json(state.builder().usage(&team.0).await?))
}

/// `POST /cove/templates/gc`: removes the layers nothing uses.
pub async fn collect(
    State(state): State<AppState>,
    _team: Team,
) -> Result<Json<CollectedLayers>, ApiError> {
    Ok(Json(state.builder().collect().await?))
}
