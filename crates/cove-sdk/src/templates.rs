//! Templates a sandbox can be created from.

use cove_proto::rest::Template;

use crate::{config::ConnectionConfig, error::Result};

/// Every template the server offers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cove_sdk::Result<()> {
/// # let server = cove_test_util::TestServer::for_doctest().await;
/// # let config = server.config();
/// let templates = cove_sdk::templates::list(&config).await?;
/// assert!(templates.iter().any(|t| t.aliases.contains(&"base".to_owned())));
/// # Ok(())
/// # }
/// ```
pub async fn list(config: &ConnectionConfig) -> Result<Vec<Template>> {
    config
        .api(http::Method::GET, "/templates")
        .send_json()
        .await
}

/// Asks for a template named `name` (`name:tag`; the caller's own is rebuilt) and a new build
/// of it, whose steps [`start_build`] sends (`POST /v3/templates`).
pub async fn request_build(
    config: &ConnectionConfig,
    request: &cove_proto::templates::NewTemplate,
) -> Result<cove_proto::templates::TemplateRequested> {
    config
        .api(http::Method::POST, "/v3/templates")
        .json(request)
        .send_json()
        .await
}

/// Uploads the files of a COPY step (a tar, gzipped or not) under `hash`, unless the server
/// has them already; returns whether it had them.
pub async fn upload_files(
    config: &ConnectionConfig,
    template_id: &str,
    hash: &str,
    archive: Vec<u8>,
) -> Result<bool> {
    let link: cove_proto::templates::FileUpload = config
        .api(
            http::Method::GET,
            &format!("/templates/{template_id}/files/{hash}"),
        )
        .send_json()
        .await?;
    if link.present {
        return Ok(true);
    }
    let url = link.url.ok_or_else(|| {
        crate::Error::Protocol("the server gave no upload link for missing files".to_owned())
    })?;
    // The link carries its own credential: no API key goes with it.
    config
        .raw(http::Method::PUT, &url)
        .body(archive)
        .send_empty()
        .await?;
    Ok(false)
}

/// Starts build `build_id` of template `template_id` with its base and steps.
pub async fn start_build(
    config: &ConnectionConfig,
    template_id: &str,
    build_id: &str,
    build: &cove_proto::templates::BuildStart,
) -> Result<()> {
    config
        .api(
            http::Method::POST,
            &format!("/v2/templates/{template_id}/builds/{build_id}"),
        )
        .json(build)
        .send_empty()
        .await
}

/// Where a build is, with its log entries from `logs_offset` on.
pub async fn build_status(
    config: &ConnectionConfig,
    template_id: &str,
    build_id: &str,
    logs_offset: u64,
) -> Result<cove_proto::templates::BuildInfo> {
    config
        .api(
            http::Method::GET,
            &format!("/templates/{template_id}/builds/{build_id}/status"),
        )
        .query(&[("logsOffset", logs_offset)])
        .send_json()
        .await
}

/// Deletes a template (a built one or a snapshot), by id or name.
pub async fn delete(config: &ConnectionConfig, id_or_name: &str) -> Result<()> {
    config
        .api(http::Method::DELETE, &format!("/templates/{id_or_name}"))
        .send_empty()
        .await
}

/// The tags of a template's builds.
pub async fn tags(
    config: &ConnectionConfig,
    id_or_name: &str,
) -> Result<Vec<cove_proto::templates::TemplateTag>> {
    config
        .api(http::Method::GET, &format!("/templates/{id_or_name}/tags"))
        .send_json()
        .await
}

/// Tags the build `target` (`name:tag`, or `name` for its default tag) with `tags` too.
pub async fn assign_tags(
    config: &ConnectionConfig,
    target: &str,
    tags: Vec<String>,
) -> Result<cove_proto::templates::AssignedTags> {
    config
        .api(http::Method::POST, "/templates/tags")
        .json(&cove_proto::templates::AssignTags {
            target: target.to_owned(),
            tags,
        })
        .send_json()
        .await
}

/// Takes `tags` off template `name`.
pub async fn delete_tags(config: &ConnectionConfig, name: &str, tags: Vec<String>) -> Result<()> {
    config
        .api(http::Method::DELETE, "/templates/tags")
        .json(&cove_proto::templates::DeleteTags {
            name: name.to_owned(),
            tags,
        })
        .send_empty()
        .await
}

/// What each of the caller's templates takes on disk (Cove's own).
pub async fn usage(config: &ConnectionConfig) -> Result<Vec<cove_proto::templates::TemplateUsage>> {
    config
        .api(http::Method::GET, "/cove/templates/usage")
        .send_json()
        .await
}

/// Removes the layers no template, build or sandbox uses (Cove's own).
pub async fn collect(config: &ConnectionConfig) -> Result<cove_proto::templates::CollectedLayers> {
    config
        .api(http::Method::POST, "/cove/templates/gc")
        .send_json()
        .await
}

/// Imports an image archive (an OCI layout as a tar, or a `docker save` archive) at `archive`
/// as template `name` (`name:tag`); `image` picks one when it holds several, `runtime` the
/// backend its sandboxes run on (none: the server's default). Answers once the template is
/// ready.
pub async fn import(
    config: &ConnectionConfig,
    name: &str,
    image: Option<&str>,
    runtime: Option<&str>,
    archive: &std::path::Path,
) -> Result<cove_proto::templates::TemplateRequested> {
    let file = tokio::fs::File::open(archive).await.map_err(|err| {
        crate::Error::Protocol(format!("cannot open {}: {err}", archive.display()))
    })?;
    let mut query = vec![("name", name)];
    if let Some(image) = image {
        query.push(("image", image));
    }
    if let Some(runtime) = runtime {
        query.push(("runtime", runtime));
    }
    config
        .api(http::Method::POST, "/cove/templates/import")
        .query(&query)
        .body(reqwest::Body::from(file))
        .send_json()
        .await
}
