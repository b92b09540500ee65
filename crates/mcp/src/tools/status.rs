//! `status`: a lease's box, optionally waiting until it is ready.

use std::time::Duration;

use crabbox_core::engine::{BoxStatus, StatusRequest};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct StatusArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// Lease id (`cbx_...`), slug, or the provider's id of the box. Default: the one lease
    /// this machine holds for the provider.
    #[serde(default)]
    id: Option<String>,
    /// Wait up to this many seconds for the box to be ready.
    #[serde(default)]
    wait_secs: Option<u64>,
}

#[tool_router(router = status_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// A lease's box: its state, whether it is ready, its workdir and expiry.
    #[tool(
        name = "status",
        output_schema = schema::<BoxStatus>(),
        annotations(read_only_hint = true)
    )]
    async fn status(
        &self,
        Parameters(a): Parameters<StatusArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<BoxStatus>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let req = StatusRequest {
            id: a.id,
            wait: a.wait_secs.map(Duration::from_secs),
        };
        let result = call.engine.status(&req).await;
        call.finish(result).await
    }
}
