//! `wait` and `kill`: a detached run's end, and stopping it.

use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RunRefArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory).
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// The run id `run` with `detach` returned (or a unique prefix of 6+ characters).
    run: String,
}

/// How a detached run ended.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WaitResult {
    run_id: String,
    /// Its exit code; `null` when it ended without recording one (killed with its wrapper,
    /// or the box restarted).
    exit_code: Option<i32>,
}

/// A stopped run.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KillResult {
    run_id: String,
    stopped: bool,
}

#[tool_router(router = wait_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// Wait until a detached run ends; its exit code (cancelling the call stops waiting, not
    /// the run).
    #[tool(
        name = "wait",
        output_schema = schema::<WaitResult>(),
        annotations(read_only_hint = true)
    )]
    async fn wait(
        &self,
        Parameters(a): Parameters<RunRefArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<WaitResult>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let result = call.engine.run_wait(&a.run, &ctx.ct).await;
        let result = result.map(|exit_code| WaitResult {
            run_id: a.run,
            exit_code,
        });
        call.finish(result).await
    }

    /// Stop a detached run's whole process tree (SIGTERM, then SIGKILL).
    #[tool(
        name = "kill",
        output_schema = schema::<KillResult>(),
        annotations(destructive_hint = true)
    )]
    async fn kill(
        &self,
        Parameters(a): Parameters<RunRefArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<KillResult>, ToolError> {
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let result = call.engine.run_kill(&a.run, call.reporter.as_ref()).await;
        let result = result.map(|()| KillResult {
            run_id: a.run,
            stopped: true,
        });
        call.finish(result).await
    }
}
