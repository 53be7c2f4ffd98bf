//! For test suites outside Rust (tests/compat): a registry seeded as Docker Hub's mirror
//! ([`cove_test_util::seeded_mirror`]). Prints its URL on a line of stdout once it serves,
//! and runs until stdin closes; then it stops the registry and removes its storage.

use std::io::{Read, Write};

#[tokio::main]
async fn main() {
    let mut registry = cove_test_util::seeded_mirror().await;
    println!("{}", registry.url());
    let _ = std::io::stdout().flush();
    let _ = tokio::task::spawn_blocking(|| {
        let mut rest = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut rest);
    })
    .await;
    registry.stop();
}
