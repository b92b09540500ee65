//! `snapshot`: a snapshot of a lease's box, for new boxes to start from (`fromSnapshot` of
//! `warmup` and `run`; providers with snapshots).

use crabbox_core::engine::SnapshotOutcome;
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SnapshotArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// Lease id (`cbx_...`), slug, or the provider's id of the box.
    id: String,
    /// A name to start boxes from it by.
    #[serde(default)]
    name: Option<String>,
}

#[tool_router(router = snapshot_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// Snapshot a lease's box; `warmup` or `run` with `fromSnapshot` start new boxes from it.
    #[tool(name = "snapshot", output_schema = schema::<SnapshotOutcome>())]
    async fn snapshot(
        &self,
        Parameters(a): Parameters<SnapshotArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<SnapshotOutcome>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let result = call.engine.snapshot(&a.id, a.name.as_deref()).await;
        call.finish(result).await
    }
}
