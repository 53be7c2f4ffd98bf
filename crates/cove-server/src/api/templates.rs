//! E2B's template API: requesting a build (`POST /v3/templates`), uploading the files COPY
//! steps take, starting the build with its steps, its status and log, the listing, names,
//! tags and deletion; and Cove's own additions (import, disk use, collection).

use axum::{
    Json,
    body::Body,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use cove_proto::{
    envd::VERSION as ENVD_VERSION,
    rest::Template,
    templates::{
        AliasInfo, AssignTags, AssignedTags, BuildInfo, BuildStart, BuildStatus, DeleteTags,
        FileUpload, NewTemplate, TemplateRequested, TemplateTag,
    },
};
use serde::Deserialize;

use super::{ApiError, ApiQuery, Team};
use crate::{
    AppState,
    build::{BuildError, Plan, plan::valid_files_hash},
    catalog::{self, BuildRow, CatalogError, Owner, TemplateRow},
    clock,
    lifecycle::{HostCaps, LifecycleError, TemplateKind},
};

/// Resources a template's sandboxes get when its request names none.
const CPU_COUNT: u32 = 2;
const MEMORY_MB: u64 = 1024;
/// The disk size listed for templates (each sandbox's quota is the server's setting).
const LISTED_DISK_MB: u64 = 4096;

impl From<CatalogError> for ApiError {
    fn from(err: CatalogError) -> Self {
        if err.is_unavailable() {
            return super::database_unavailable(&err);
        }
        if err.is_disk_full() {
            return ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the server's disk is full: try again later",
            )
            .retry_after(30);
        }
        tracing::error!(err = %cove_image::error_chain(&err), "template catalogue failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the template catalogue failed",
        )
    }
}

fn json_body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(v)| v).map_err(|rejection| {
        let status = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(
            status,
            format!("invalid request body: {}", rejection.body_text()),
        )
    })
}

/// The caller's template named `id_or_name` (a `:tag` is ignored), or a 404.
fn own_template(state: &AppState, team: &str, id_or_name: &str) -> Result<TemplateRow, ApiError> {
    let bare = id_or_name.split(':').next().unwrap_or(id_or_name);
    match state.templates_catalog().find(team, bare)? {
        Owner::Team(row) => Ok(row),
        Owner::Nobody if is_built_in(state, bare) => Err(ApiError::bad_request(format!(
            "{bare:?} is built into the server: it cannot be changed"
        ))),
        Owner::Nobody | Owner::OtherTeam => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("template {bare:?} not found"),
        )),
    }
}

fn is_built_in(state: &AppState, name: &str) -> bool {
    state
        .lifecycle()
        .templates()
        .base()
        .names
        .iter()
        .any(|n| n == name)
}

/// `POST /v3/templates`: a template (new, or the caller's own of that name) and its next
/// build, waiting for its steps.
pub async fn request_build(
    State(state): State<AppState>,
    team: Team,
    payload: Result<Json<NewTemplate>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(payload)?;
    let full = request
        .name
        .clone()
        .or(request.alias.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("the template's name is missing (give name)"))?;
    let prepared = prepare(
        &state,
        &team.0,
        &full,
        request.tags.clone().unwrap_or_default(),
        Resources {
            cpu_count: request.cpu_count,
            memory_mb: request.memory_mb,
            runtime: request.runtime.as_deref(),
        },
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
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

/// What a build request asks its template's sandboxes to get; what it leaves out stays as
/// the template had it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resources<'a> {
    pub cpu_count: Option<u32>,
    pub memory_mb: Option<u64>,
    /// The backend they run on ([`crate::lifecycle::RUNTIME_KEY`]).
    pub runtime: Option<&'a str>,
}

/// A template and its new build, as a build request or an import makes them.
pub struct Prepared {
    pub template: TemplateRow,
    pub build: BuildRow,
    pub name: String,
    pub tags: Vec<String>,
}

/// Checks `full` (`name` or `name:tag`), `tags` and the resources, and makes (or finds, when
/// the team has it) the template and a new build of it.
pub async fn prepare(
    state: &AppState,
    team: &str,
    full: &str,
    extra_tags: Vec<String>,
    asked: Resources<'_>,
) -> Result<Prepared, ApiError> {
    let Resources {
        cpu_count,
        memory_mb,
        runtime,
    } = asked;
    let (name, name_tag) = match full.split_once(':') {
        Some((name, tag)) => (name.to_owned(), Some(tag.to_owned())),
        None => (full.to_owned(), None),
    };
    if name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "invalid name {full:?}: a tag needs the template's name before it (name:tag)"
        )));
    }
    if !catalog::valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "invalid template name {name:?}: use 1 to 128 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )));
    }
    if name == "base" {
        return Err(ApiError::bad_request(
            "the name \"base\" is the built-in template's: choose another",
        ));
    }
    let mut tags: Vec<String> = name_tag.into_iter().collect();
    for tag in extra_tags {
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    if let Some(bad) = tags.iter().find(|t| !catalog::valid_tag(t)) {
        return Err(ApiError::bad_request(format!(
            "invalid tag {bad:?}: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )));
    }
    if tags.is_empty() {
        tags.push(catalog::DEFAULT_TAG.to_owned());
    }
    if state
        .lifecycle()
        .snapshot_named(team, &name)
        .await
        .is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "the template name {name:?} is a snapshot's of the team: choose another, or delete the snapshot"
            ),
        ));
    }
    let caps = state.lifecycle().caps();
    let (cpus, memory) = check_resources(caps, cpu_count, memory_mb)?;
    if let Some(runtime) = runtime {
        state.lifecycle().check_runtime(runtime, "runtime")?;
    }
    let catalog = state.templates_catalog();
    let template = match catalog.name_owner(team, &name)? {
        Owner::OtherTeam => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("the template name {name:?} is taken by another team: choose another"),
            ));
        }
        Owner::Team(mut row) => {
            if cpu_count.is_some() || memory_mb.is_some() {
                catalog.set_template_resources(&row.id, cpus, memory)?;
                (row.cpu_count, row.memory_mb) = (cpus, memory);
            }
            if let Some(runtime) = runtime.filter(|r| row.runtime.as_deref() != Some(*r)) {
                catalog.set_template_runtime(&row.id, runtime)?;
                row.runtime = Some(runtime.to_owned());
            }
            row
        }
        Owner::Nobody => catalog.create_template(
            &crate::secrets::random_id(20),
            team,
            &name,
            cpus,
            memory,
            runtime,
        )?,
    };
    let build = catalog.new_build(&uuid::Uuid::new_v4().to_string(), &template.id, &tags)?;
    tracing::info!(template = %template.id, build_id = %build.id, %name, "template build requested");
    Ok(Prepared {
        template,
        build,
        name,
        tags,
    })
}

fn check_resources(
    caps: HostCaps,
    cpu_count: Option<u32>,
    memory_mb: Option<u64>,
) -> Result<(u32, u64), ApiError> {
    let cpu_count = cpu_count.unwrap_or(CPU_COUNT.min(caps.cpus));
    if !(1..=caps.cpus).contains(&cpu_count) {
        return Err(ApiError::bad_request(format!(
            "cpuCount must be between 1 and {} on this server, got {cpu_count}",
            caps.cpus
        )));
    }
    let memory_mb = memory_mb.unwrap_or(MEMORY_MB.min(caps.memory_mb));
    if !(64..=caps.memory_mb).contains(&memory_mb) {
        return Err(ApiError::bad_request(format!(
            "memoryMB must be between 64 and {} on this server, got {memory_mb}",
            caps.memory_mb
        )));
    }
    Ok((cpu_count, memory_mb))
}

/// `GET /templates/{id}/files/{hash}`: whether the files are there, and where to upload
/// them if not.
pub async fn file_upload_link(
    State(state): State<AppState>,
    team: Team,
    Path((id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let template = own_template(&state, &team.0, &id)?;
    if !valid_files_hash(&hash) {
        return Err(ApiError::bad_request(format!(
            "invalid files hash {hash:?}: expected 64 hexadecimal characters"
        )));
    }
    let contexts = state.builder().contexts();
    let present = contexts.has(&template.team, &hash);
    let url = (!present).then(|| {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let scheme = headers
            .get("x-forwarded-proto")
            .and_then(|h| h.to_str().ok())
            .filter(|p| *p == "https")
            .unwrap_or("http");
        format!(
            "{scheme}://{host}/templates/{}/files/{hash}?{}",
            template.id,
            contexts.upload_query(&template.id, &hash)
        )
    });
    Ok((StatusCode::CREATED, Json(FileUpload { present, url })).into_response())
}

/// Query of an upload URL.
#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    expires: Option<i64>,
    signature: Option<String>,
}

/// `PUT /templates/{id}/files/{hash}?expires=…&signature=…`: the upload itself; the URL is
/// its credential.
pub async fn upload_files(
    State(state): State<AppState>,
    Path((id, hash)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let contexts = state.builder().contexts();
    let (Some(expires), Some(signature)) = (query.expires, query.signature) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this upload URL carries no signature: ask GET /templates/{id}/files/{hash} for one",
        ));
    };
    if !valid_files_hash(&hash) || !contexts.check(&id, &hash, expires, &signature) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the upload URL is invalid or expired: ask for a new one",
        ));
    }
    let Some(template) = state.templates_catalog().template(&id)? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("template {id:?} not found"),
        ));
    };
    let size = contexts
        .store(&template.team, &hash, body)
        .await
        .map_err(|err| match err {
            crate::build::context::ContextError::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, err.to_string())
            }
            crate::build::context::ContextError::Body(_) => ApiError::bad_request(err.to_string()),
            crate::build::context::ContextError::Io { .. } => {
                tracing::error!(err = %cove_image::error_chain(&err), "cannot store an upload");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the upload")
            }
        })?;
    state
        .templates_catalog()
        .note_upload(&template.team, &hash)?;
    tracing::debug!(template = %id, %hash, size, "build files uploaded");
    Ok(StatusCode::OK)
}

/// The caller's build `build` of template `id`, or a 404.
fn own_build(
    state: &AppState,
    team: &str,
    id: &str,
    build: &str,
) -> Result<(TemplateRow, BuildRow), ApiError> {
    let template = own_template(state, team, id)?;
    let build = state
        .templates_catalog()
        .build(&template.id, build)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("build {build:?} of template {id:?} not found"),
            )
        })?;
    Ok((template, build))
}

/// `POST /v2/templates/{id}/builds/{buildID}`: the build's steps; it starts.
pub async fn start_build(
    State(state): State<AppState>,
    team: Team,
    Path((id, build_id)): Path<(String, String)>,
    payload: Result<Json<BuildStart>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let request = json_body(payload)?;
    let (template, build) = own_build(&state, &team.0, &id, &build_id)?;
    if build.triggered || build.status != BuildStatus::Waiting {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "build {build_id} was started already: request a new build (POST /v3/templates)"
            ),
        ));
    }
    let plan = Plan::new(&request).map_err(|err| ApiError::bad_request(err.to_string()))?;
    let contexts = state.builder().contexts();
    for (step, hash) in plan.files() {
        if !contexts.has(&template.team, hash) {
            return Err(ApiError::bad_request(format!(
                "{}: the files with hash {hash} were not uploaded: get an upload URL from GET /templates/{}/files/{hash} and PUT them there first",
                step.describe(),
                template.id
            )));
        }
    }
    check_base(&state, &team.0, &plan).await?;
    state
        .builder()
        .start(template, build, plan)
        .map_err(|err| match err {
            BuildError::AlreadyStarted(_) => ApiError::new(StatusCode::CONFLICT, err.to_string()),
            BuildError::Catalog(err) => err.into(),
        })?;
    Ok(StatusCode::ACCEPTED)
}

/// Refuses a build whose base cannot be had, before it starts: an image that does not
/// exist (or not for this machine), a template the team has not.
async fn check_base(state: &AppState, team: &str, plan: &Plan) -> Result<(), ApiError> {
    match &plan.base {
        crate::build::plan::Base::Image {
            reference,
            credentials,
        } => match state.builder().resolve(reference, credentials).await {
            Ok(()) => Ok(()),
            Err(err) => {
                let message = format!(
                    "cannot use image {reference}: {}",
                    cove_image::error_chain(&err)
                );
                let status = match &err {
                    cove_image::RegistryError::NotFound { .. } => StatusCode::NOT_FOUND,
                    cove_image::RegistryError::Status { status, .. } if *status >= 500 => {
                        StatusCode::BAD_GATEWAY
                    }
                    cove_image::RegistryError::Client(_)
                    | cove_image::RegistryError::Connect { .. }
                    | cove_image::RegistryError::Token { .. } => StatusCode::BAD_GATEWAY,
                    _ => StatusCode::BAD_REQUEST,
                };
                Err(ApiError::new(status, message))
            }
        },
        crate::build::plan::Base::Template(name) => {
            match state.lifecycle().templates().get(team, name) {
                Ok(entry) if matches!(entry.kind, TemplateKind::BuiltIn) => {
                    Err(ApiError::bad_request(format!(
                        "cannot build on {name:?}: it is built into the server from the host's own files; start from an image instead (fromImage, e.g. debian:bookworm)"
                    )))
                }
                Ok(_) => Ok(()),
                Err(LifecycleError::TemplateNotFound(_)) => Err(ApiError::bad_request(format!(
                    "fromTemplate: template {name:?} not found"
                ))),
                Err(err) => Err(ApiError::bad_request(format!("fromTemplate: {err}"))),
            }
        }
    }
}

/// Query of the build status.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusQuery {
    logs_offset: Option<i64>,
    limit: Option<i64>,
    level: Option<String>,
}

/// The most log entries one status answer holds (E2B's limit).
const MAX_LOG_PAGE: i64 = 100;

/// `GET /templates/{id}/builds/{buildID}/status`.
pub async fn build_status(
    State(state): State<AppState>,
    team: Team,
    Path((id, build_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<StatusQuery>,
) -> Result<Json<BuildInfo>, ApiError> {
    let offset = query.logs_offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request("logsOffset must not be negative"));
    }
    let limit = query.limit.unwrap_or(MAX_LOG_PAGE);
    if !(0..=MAX_LOG_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 0 and {MAX_LOG_PAGE}"
        )));
    }
    if let Some(level) = &query.level
        && !matches!(level.as_str(), "debug" | "info" | "warn" | "error")
    {
        return Err(ApiError::bad_request(format!(
            "unknown level {level:?}: use debug, info, warn or error"
        )));
    }
    let (template, build) = own_build(&state, &team.0, &id, &build_id)?;
    // The status first: every log line of a finished build is stored before it finished.
    let status = build.status;
    let log_entries = state.templates_catalog().read_logs(
        &build.id,
        offset as u64,
        limit as usize,
        query.level.as_deref(),
    )?;
    Ok(Json(BuildInfo {
        template_id: template.id,
        build_id: build.id,
        status,
        logs: Vec::new(),
        log_entries,
        reason: build.reason,
    }))
}

/// `GET /templates`: the built-in `base`, the caller's built templates and its snapshots.
pub async fn list(
    State(state): State<AppState>,
    team: Team,
) -> Result<Json<Vec<Template>>, ApiError> {
    let base = state.lifecycle().templates().base().clone();
    let mut listed = vec![Template {
        template_id: base.id.clone(),
        build_id: format!("{}-build", base.id),
        cpu_count: CPU_COUNT,
        memory_mb: MEMORY_MB,
        disk_size_mb: LISTED_DISK_MB,
        public: true,
        aliases: vec![base.alias.clone()],
        names: base.names.clone(),
        created_at: clock::rfc3339(base.created_at),
        updated_at: clock::rfc3339(base.created_at),
        created_by: None,
        last_spawned_at: None,
        spawn_count: 0,
        build_count: 1,
        envd_version: ENVD_VERSION.to_owned(),
        build_status: "ready".to_owned(),
        runtime: None,
    }];
    let catalog = state.templates_catalog();
    for row in catalog.templates_of(&team.0)? {
        let builds = catalog.builds_of(&row.id)?;
        let shown = builds
            .iter()
            .find(|b| b.status == BuildStatus::Ready)
            .or(builds.first());
        listed.push(Template {
            template_id: row.id.clone(),
            build_id: shown.map(|b| b.id.clone()).unwrap_or_default(),
            cpu_count: row.cpu_count,
            memory_mb: row.memory_mb,
            disk_size_mb: LISTED_DISK_MB,
            public: false,
            aliases: row.names.clone(),
            names: row.names.clone(),
            created_at: clock::rfc3339(row.created_at),
            updated_at: clock::rfc3339(row.updated_at),
            created_by: None,
            last_spawned_at: row.last_spawned_at.map(clock::rfc3339),
            spawn_count: row.spawn_count,
            build_count: builds.len() as u64,
            envd_version: ENVD_VERSION.to_owned(),
            build_status: builds
                .first()
                .map(|b| b.status.as_str())
                .unwrap_or("waiting")
                .to_owned(),
            runtime: row.runtime.clone(),
        });
    }
    for snapshot in state.lifecycle().snapshots(&team.0, None, None) {
        listed.push(Template {
            template_id: snapshot.id.clone(),
            build_id: format!("{}-snapshot", snapshot.id),
            cpu_count: snapshot.cpu_count.unwrap_or(CPU_COUNT),
            memory_mb: snapshot.memory_mb.unwrap_or(MEMORY_MB),
            disk_size_mb: LISTED_DISK_MB,
            public: false,
            aliases: vec![snapshot.alias.clone()],
            names: snapshot.names.clone(),
            created_at: clock::rfc3339(snapshot.created_at),
            updated_at: clock::rfc3339(snapshot.created_at),
            created_by: None,
            last_spawned_at: None,
            spawn_count: 0,
            build_count: 1,
            envd_version: ENVD_VERSION.to_owned(),
            build_status: "ready".to_owned(),
            runtime: snapshot.runtime.clone(),
        });
    }
    Ok(Json(listed))
}

/// `GET /templates/aliases/{alias}`: 200 for the caller's (and built-in) names, 403 for
/// another team's, 404 for names nobody has.
pub async fn alias(
    State(state): State<AppState>,
    team: Team,
    Path(alias): Path<String>,
) -> Result<Json<AliasInfo>, ApiError> {
    if let Some(snapshot) = state.lifecycle().snapshot_named(&team.0, &alias).await {
        return Ok(Json(AliasInfo {
            template_id: snapshot.id,
            public: false,
        }));
    }
    match state.templates_catalog().name_owner(&team.0, &alias)? {
        Owner::Team(row) => Ok(Json(AliasInfo {
            template_id: row.id,
            public: false,
        })),
        Owner::OtherTeam => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("the template name {alias:?} belongs to another team"),
        )),
        Owner::Nobody if is_built_in(&state, &alias) => Ok(Json(AliasInfo {
            template_id: state.lifecycle().templates().base().id.clone(),
            public: true,
        })),
        Owner::Nobody => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no template is named {alias:?}"),
        )),
    }
}

/// `DELETE /templates/{id}` (by id or name): a built template, its names, builds and tags, or
/// a snapshot; layers stay while other templates or sandboxes use them.
pub async fn delete(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    // A snapshot is a template too (E2B deletes both here).
    if let Some(snapshot) = state.lifecycle().snapshot_named(&team.0, &id).await {
        state.lifecycle().delete_snapshot(&snapshot).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    let template = own_template(&state, &team.0, &id)?;
    let catalog = state.templates_catalog();
    if catalog
        .builds_of(&template.id)?
        .iter()
        .any(|b| b.triggered && !b.status.is_finished())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a build of template {id:?} is running: wait for it to finish, then delete"),
        ));
    }
    let builds = catalog.delete_template(&template.id)?;
    state.builder().forget(&builds);
    tracing::info!(template = %template.id, "template deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /templates/tags`: tags more builds (`target` is `name:tag`, `name` alone its
/// default tag).
pub async fn assign_tags(
    State(state): State<AppState>,
    team: Team,
    payload: Result<Json<AssignTags>, JsonRejection>,
) -> Result<Response, ApiError> {
    let request = json_body(payload)?;
    let (name, tag) = match request.target.split_once(':') {
        Some((name, tag)) => (name, tag),
        None => (request.target.as_str(), catalog::DEFAULT_TAG),
    };
    if name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "invalid target {:?}: name the template before the tag (name:tag)",
            request.target
        )));
    }
    if request.tags.is_empty() {
        return Err(ApiError::bad_request("tags is empty: name at least one"));
    }
    if let Some(bad) = request.tags.iter().find(|t| !catalog::valid_tag(t)) {
        return Err(ApiError::bad_request(format!("invalid tag {bad:?}")));
    }
    let template = own_template(&state, &team.0, name)?;
    let catalog = state.templates_catalog();
    let build = catalog
        .tagged_build(&template.id, tag)?
        .filter(|b| b.status == BuildStatus::Ready)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("template {name:?} has no ready build tagged {tag:?}"),
            )
        })?;
    for new in &request.tags {
        if let Some(before) = catalog.assign_tag(&template.id, new, &build.id)? {
            state.builder().release_if_untagged(&before)?;
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(AssignedTags {
            tags: request.tags,
            build_id: build.id,
        }),
    )
        .into_response())
}

/// `DELETE /templates/tags`.
pub async fn delete_tags(
    State(state): State<AppState>,
    team: Team,
    payload: Result<Json<DeleteTags>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let request = json_body(payload)?;
    let name = request.name.split(':').next().unwrap_or(&request.name);
    if name.is_empty() {
        return Err(ApiError::bad_request("name is empty: name the template"));
    }
    if request.tags.is_empty() {
        return Err(ApiError::bad_request("tags is empty: name at least one"));
    }
    let template = own_template(&state, &team.0, name)?;
    let catalog = state.templates_catalog();
    let existing: Vec<String> = catalog
        .tags_of(&template.id)?
        .into_iter()
        .map(|t| t.tag)
        .collect();
    if let Some(missing) = request.tags.iter().find(|t| !existing.contains(t)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("template {name:?} has no tag {missing:?}"),
        ));
    }
    for tag in &request.tags {
        if let Some(build) = catalog.remove_tag(&template.id, tag)? {
            state.builder().release_if_untagged(&build)?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /templates/{id}/tags`.
pub async fn tags(
    State(state): State<AppState>,
    team: Team,
    Path(id): Path<String>,
) -> Result<Json<Vec<TemplateTag>>, ApiError> {
    let template = own_template(&state, &team.0, &id)?;
    Ok(Json(
        state
            .templates_catalog()
            .tags_of(&template.id)?
            .into_iter()
            .map(|t| TemplateTag {
                tag: t.tag,
                build_id: t.build,
                created_at: clock::rfc3339(t.created_at),
            })
            .collect(),
    ))
}
