//! `warmup`: lease a box to reuse.

use crabbox_core::engine::{BoxStatus, WarmupRequest};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::Deserialize;

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WarmupArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// A name for the lease (otherwise one is derived from its id).
    #[serde(default)]
    slug: Option<String>,
    /// Start the box with this snapshot's files (id or name; providers with snapshots).
    #[serde(default)]
    from_snapshot: Option<String>,
}

#[tool_router(router = warmup_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// Lease a box to reuse: it stays until `stop` (or its TTL). Returns its lease id (pass it
    /// as `id` to `run`, `status`, `stop`).
    #[tool(name = "warmup", output_schema = schema::<BoxStatus>())]
    async fn warmup(
        &self,
        Parameters(a): Parameters<WarmupArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<BoxStatus>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let req = WarmupRequest {
            slug: a.slug,
            ttl: call.cfg.core.ttl,
            repo_root: Some(call.cfg.repo_root.clone()),
            from_snapshot: a.from_snapshot,
            idle_timeout: Some(call.cfg.core.idle_timeout).filter(|d| !d.is_zero()),
        };
        let result = call.engine.warmup(&req, call.reporter.as_ref()).await;
        call.finish(result).await
    }
}
