//! `pause` and `resume`: a lease's box stops costing compute and wakes again (providers with
//! pause: e2b).

use crabbox_core::engine::LifecycleOutcome;
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct LeaseArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// Lease id (`cbx_...`), slug, or the provider's id of the box.
    id: String,
}

#[tool_router(router = pause_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// Pause a lease's box: its files (and on E2B its processes) are kept and it costs no
    /// compute until `resume` (a `run` with its id wakes it too). Providers with pause only.
    #[tool(
        name = "pause",
        output_schema = schema::<LifecycleOutcome>(),
        annotations(idempotent_hint = true)
    )]
    async fn pause(
        &self,
        Parameters(a): Parameters<LeaseArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<LifecycleOutcome>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let result = call.engine.pause(&a.id).await;
        call.finish(result).await
    }

    /// Wake a lease's paused box.
    #[tool(
        name = "resume",
        output_schema = schema::<LifecycleOutcome>(),
        annotations(idempotent_hint = true)
    )]
    async fn resume(
        &self,
        Parameters(a): Parameters<LeaseArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<LifecycleOutcome>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let result = call.engine.resume(&a.id, call.cfg.core.ttl).await;
        call.finish(result).await
    }
}
