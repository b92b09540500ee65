//! `list`: the boxes of the configured provider.

use crabbox_core::engine::BoxStatus;
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
}

/// The boxes, each with whether this machine claims it.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct ListResult {
    boxes: Vec<BoxStatus>,
}

#[tool_router(router = list_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// Every box of the provider: leases this machine holds (a box that is gone shows as
    /// `gone`) and crabbox boxes no claim here names (`claimed: false`).
    #[tool(
        name = "list",
        output_schema = schema::<ListResult>(),
        annotations(read_only_hint = true)
    )]
    async fn list(
        &self,
        Parameters(a): Parameters<ListArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<ListResult>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let result = call.engine.list().await.map(|boxes| ListResult { boxes });
        call.finish(result).await
    }
}
