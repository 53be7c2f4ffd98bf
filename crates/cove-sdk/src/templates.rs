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
