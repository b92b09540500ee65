//! `stop`: release a lease's box, then drop its claim.

use crabbox_core::engine::{StopOutcome, StopRequest};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct StopArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// Lease id (`cbx_...`), slug, or the provider's id of the box.
    id: String,
    /// Also release a crabbox box no claim of this machine names (its claim was lost), as
    /// long as the provider proves it is crabbox's.
    #[serde(default)]
    reclaim: bool,
}

#[tool_router(router = stop_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// Release a lease: delete its box, then drop its claim. An `id` this machine holds no
    /// lease for is refused.
    #[tool(
        name = "stop",
        output_schema = schema::<StopOutcome>(),
        annotations(destructive_hint = true, idempotent_hint = false)
    )]
    async fn stop(
        &self,
        Parameters(a): Parameters<StopArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<StopOutcome>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let req = StopRequest {
            id: a.id,
            reclaim: a.reclaim,
        };
        let result = call.engine.stop(&req).await;
        call.finish(result).await
    }
}
