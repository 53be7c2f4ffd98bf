//! The dashboard's files, built into the binary (no internet and no second server at run
//! time), served with a Content-Security-Policy that allows nothing but this origin.

use axum::{
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};

use crate::api::ApiError;

/// What the pages may load and talk to: scripts, styles, images and fonts of this origin
/// only, no inline script, connections (REST, proxy, the terminal's WebSocket) to this
/// origin only, never framed. Inline *styles* are allowed because xterm.js sizes its rows
/// and colours with `<style>` elements it makes at run time; scripts stay strict.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            bytes: include_bytes!(concat!("../../ui/", $path)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file of the dashboard (crates/cove-server/ui/).
const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("app.css", CSS),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/main.js", JS),
    asset!("js/api.js", JS),
    asset!("js/early.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/login.js", JS),
    asset!("js/sandboxes.js", JS),
    asset!("js/sandbox.js", JS),
    asset!("js/chart.js", JS),
    asset!("js/files.js", JS),
    asset!("js/terminal.js", JS),
    asset!("js/templates.js", JS),
    asset!("vendor/xterm.mjs", JS),
    asset!("vendor/xterm.css", CSS),
    asset!("vendor/addon-fit.mjs", JS),
];

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.path == path)
}

fn serve(asset: &Asset) -> Response {
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary; a browser asks again rather than keep an old page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `/ui` → `/ui/`, so that the page's relative links resolve under `/ui/`.
pub async fn to_index() -> Redirect {
    Redirect::permanent("/ui/")
}

pub async fn index() -> Response {
    match find("index.html") {
        Some(asset) => serve(asset),
        None => not_found("index.html"),
    }
}

pub async fn asset(Path(path): Path<String>) -> Response {
    match find(&path) {
        Some(asset) => serve(asset),
        None => not_found(&path),
    }
}

fn not_found(path: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such file of the dashboard: /ui/{path}"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_distinct_path_and_is_not_empty() {
        let mut seen = std::collections::BTreeSet::new();
        for asset in ASSETS {
            assert!(seen.insert(asset.path), "{} twice", asset.path);
            assert!(!asset.bytes.is_empty(), "{} is empty", asset.path);
        }
    }

    #[test]
    fn pages_hold_no_inline_script() {
        // The CSP refuses inline scripts; a page with one would break, so none may exist.
        for asset in ASSETS.iter().filter(|a| a.content_type == HTML) {
            let text = std::str::from_utf8(asset.bytes).expect("pages are UTF-8");
            for (at, _) in text.match_indices("<script") {
                let tag = &text[at..text[at..].find('>').map_or(text.len(), |end| at + end)];
                assert!(tag.contains("src="), "inline script in {}", asset.path);
            }
            let lower = text.to_ascii_lowercase();
            for (at, _) in lower.match_indices(" on") {
                let rest = &lower[at + 3..];
                let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
                assert!(
                    name == 0 || !rest[name..].starts_with('='),
                    "inline event handler in {}",
                    asset.path
                );
            }
        }
    }
}
