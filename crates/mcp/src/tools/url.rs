//! `url`: how to reach a port of a lease's box (providers with port URLs).

use crabbox_core::engine::PortOutcome;
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UrlArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// Lease id (`cbx_...`), slug, or the provider's id of the box.
    id: String,
    /// The port a server on the box listens on.
    port: u16,
}

#[tool_router(router = url_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// The URL of a port of a lease's box, with the headers a request must carry (a private
    /// box's traffic token: it lets whoever holds it reach that port).
    #[tool(
        name = "url",
        output_schema = schema::<PortOutcome>(),
        annotations(read_only_hint = true)
    )]
    async fn url(
        &self,
        Parameters(a): Parameters<UrlArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<PortOutcome>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let result = call.engine.port_url(&a.id, a.port, call.cfg.core.ttl).await;
        call.finish(result).await
    }
}
