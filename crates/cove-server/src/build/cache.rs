//! Cache keys of build steps: each names its parent's key, the step as sent and the hash of
//! the files it copies, so an unchanged step on an unchanged parent has the same key, and a
//! change anywhere gives every later step a new one.

use sha2::{Digest as _, Sha256};

use super::plan::PlannedStep;

/// Bumped whenever a step's result would differ for the same input (a change in how Cove
/// runs steps), so no stale layer is reused.
const RECIPE: &str = "cove-build-v1";

/// The key a build's base has: the image manifest's digest, or the base template's build.
pub fn base_key(base: &str) -> String {
    digest(&[RECIPE, "base", base])
}

/// The key of `step` on top of `parent`.
pub fn step_key(parent: &str, step: &PlannedStep) -> String {
    let mut parts: Vec<&str> = vec![parent, &step.raw.kind];
    parts.extend(step.raw.args.iter().map(String::as_str));
    parts.push(step.raw.files_hash.as_deref().unwrap_or(""));
    digest(&parts)
}

fn digest(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        // Lengths first: ("ab", "c") and ("a", "bc") differ.
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

/// The layer id build `build` stores the layer of the step with cache key `key` under: a
/// step run again (forced) makes a layer of its own, which the cache then names.
pub fn layer_id(key: &str, build: &str) -> cove_image::Digest {
    cove_image::Digest::from_hex(&digest(&[RECIPE, "layer", key, build]))
        .expect("a sha256 is a digest")
}
