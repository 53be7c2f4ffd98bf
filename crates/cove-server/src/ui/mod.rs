//! The web dashboard (`/ui`): its pages, embedded in the binary, and the one route of its own
//! the API lacks, a terminal in a sandbox over a WebSocket. Everything else the pages show
//! they fetch from the REST API and the sandbox proxy, with the user's key, same-origin.

mod assets;
mod pty;
mod terminal;

use axum::{Router, routing::get};

use crate::AppState;

/// The dashboard's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(assets::to_index))
        .route("/ui/", get(assets::index))
        .route("/ui/{*path}", get(assets::asset))
        .route("/cove/sandboxes/{id}/terminal", get(terminal::open))
}
