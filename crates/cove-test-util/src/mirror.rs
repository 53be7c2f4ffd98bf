//! A registry seeded as a mirror of Docker Hub for template builds: the Debian test image
//! (python3, pip, Node.js; see [`crate::image::debian_layout`]) under the names E2B's SDKs
//! build from by default, so `Template().from_python_image("3.12")` and friends pull it.

use crate::{TestRegistry, image::debian_layout};

/// Docker Hub names the test image is pushed as (`library/…` is what `python:3.12` means).
pub const MIRRORED: [&str; 8] = [
    "library/python:3.12",
    "library/python:3",
    "library/python:3.11",
    "library/debian:bookworm",
    "library/debian:stable",
    "library/node:20",
    "library/node:lts",
    "e2bdev/base:latest",
];

/// A registry serving the test image under [`MIRRORED`]'s names: give `cove serve`
/// `--registry-mirror docker.io=<url>`.
pub async fn seeded_mirror() -> TestRegistry {
    let layout = tokio::task::spawn_blocking(debian_layout)
        .await
        .expect("the Debian test image is built");
    let registry = TestRegistry::start().await;
    for name in MIRRORED {
        registry.push_layout(&layout, "bookworm", name);
    }
    registry
}
