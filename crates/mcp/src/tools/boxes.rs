//! `runs`, `fork` and `workspaces`: a box's detached runs, copies of a box, and its
//! workspaces.

use std::time::Duration;

use crabbox_core::engine::{ForkOutcome, ForkRequest, RunState, WorkspaceList};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RunsArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory).
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// Only the runs on this lease's box (asked of the box); default: every lease this
    /// machine started a detached run on.
    #[serde(default)]
    id: Option<String>,
}

/// Detached runs with their state.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunsResult {
    runs: Vec<RunState>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ForkArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory).
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// The box to copy: lease id, slug or the provider's id.
    id: String,
    /// How many new leases (1..20).
    count: u32,
    /// Lifetime of the new boxes, seconds (default: the config's `ttl`).
    #[serde(default)]
    ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WorkspacesArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory).
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// Lease id, slug, or the provider's id of the box.
    id: String,
}

#[tool_router(router = boxes_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// Detached runs (`run` with `detach`) and their state: running, exited (with its exit
    /// code) or lost.
    #[tool(
        name = "runs",
        output_schema = schema::<RunsResult>(),
        annotations(read_only_hint = true)
    )]
    async fn runs(
        &self,
        Parameters(a): Parameters<RunsArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<RunsResult>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let result = call
            .engine
            .runs(a.id.as_deref())
            .await
            .map(|runs| RunsResult { runs });
        call.finish(result).await
    }

    /// Make `count` new leases whose boxes start as copies of one box, in one call where the
    /// provider can (each with its own lease id and slug).
    #[tool(name = "fork", output_schema = schema::<ForkOutcome>())]
    async fn fork(
        &self,
        Parameters(a): Parameters<ForkArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<ForkOutcome>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let req = ForkRequest {
            id: a.id,
            count: a.count,
            ttl: a
                .ttl_secs
                .map(Duration::from_secs)
                .unwrap_or(call.cfg.core.ttl),
        };
        let result = call.engine.fork(&req, call.reporter.as_ref()).await;
        call.finish(result).await
    }

    /// A box's workspaces (`main` first) and when each was last synced, as the box says.
    #[tool(
        name = "workspaces",
        output_schema = schema::<WorkspaceList>(),
        annotations(read_only_hint = true)
    )]
    async fn workspaces(
        &self,
        Parameters(a): Parameters<WorkspacesArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<WorkspaceList>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let result = call.engine.workspaces(&a.id).await;
        call.finish(result).await
    }
}
