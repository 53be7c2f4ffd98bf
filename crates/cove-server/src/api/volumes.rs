//! `POST/GET /volumes`, `GET/DELETE /volumes/{id}`: a team's volumes.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use cove_proto::rest::{NewVolume, Volume, VolumeAndToken};

use super::{ApiError, Team, sandboxes::body, volume_status};
use crate::{
    AppState,
    store::VolumeRecord,
    volumes::{VolumeError, Volumes},
};

impl From<VolumeError> for ApiError {
    fn from(err: VolumeError) -> Self {
        if let VolumeError::Store(store) = &err
            && store.is_unavailable()
        {
            return super::database_unavailable(&err);
        }
        let status = match &err {
            // Outside a create, a volume that is not the team's is simply not there.
            VolumeError::NotFound(_) => StatusCode::NOT_FOUND,
            other => volume_status(other),
        };
        let message = if status.is_server_error() {
            "the volume request failed on the server (see its log)".to_owned()
        } else {
            err.to_string()
        };
        ApiError::new(status, message)
    }
}

fn with_token(volume: VolumeRecord) -> VolumeAndToken {
    VolumeAndToken {
        volume_id: volume.id,
        name: volume.name,
        token: volume.token,
        size_mb: Some(volume.size_mb),
    }
}

/// Runs blocking volume work (formatting, mounting) off the async threads.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&Volumes) -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, ApiError> {
    let volumes = state.lifecycle().volumes().clone();
    tokio::task::spawn_blocking(move || work(&volumes))
        .await
        .map_err(|join| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the volume request failed unexpectedly: {join}"),
            )
        })?
        .map_err(ApiError::from)
}

pub async fn create(
    State(state): State<AppState>,
    team: Team,
    payload: Result<Json<NewVolume>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = body(payload)?;
    let volume = blocking(&state, move |v| {
        v.create(&team.0, &request.name, request.size_mb)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(with_token(volume))).into_response())
}

pub async fn list(
    State(state): State<AppState>,
    team: Team,
) -> Result<Json<Vec<Volume>>, ApiError> {
    let volumes = state.lifecycle().volumes().list(&team.0)?;
    Ok(Json(
        volumes
            .into_iter()
            .map(|v| Volume {
                volume_id: v.id,
                name: v.name,
            })
            .collect(),
    ))
}

pub async fn info(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
) -> Result<Json<VolumeAndToken>, ApiError> {
    Ok(Json(with_token(
        state.lifecycle().volumes().get(&team.0, &id)?,
    )))
}

pub async fn delete(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(&state, move |v| v.delete(&team.0, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
