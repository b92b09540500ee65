//! `logs`: the output of a detached run (`run` with `detach`), kept on the box.

use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::output::{OutputCapture, StreamTail};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct LogsArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// The run id `run` with `detach` returned (or a unique prefix of 6+ characters).
    run: String,
    /// Wait until the run ends, sending its lines as progress meanwhile.
    #[serde(default)]
    follow: bool,
    /// Bytes of the log's end the result holds (default 16384); the whole log is kept in a
    /// file when it is longer.
    #[serde(default)]
    max_output_bytes: Option<usize>,
}

/// A detached run's output so far (or all of it, with `follow`).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LogsResult {
    run_id: String,
    output: StreamTail,
}

#[tool_router(router = logs_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// The output of a detached run (`run` with `detach: true`), kept on the box while nobody
    /// watched; with `follow`, until the run ends (cancelling the call stops following, not
    /// the run).
    #[tool(
        name = "logs",
        output_schema = schema::<LogsResult>(),
        annotations(read_only_hint = true)
    )]
    async fn logs(
        &self,
        Parameters(a): Parameters<LogsArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<LogsResult>, ToolError> {
        let limit = a
            .max_output_bytes
            .unwrap_or(self.options().output_limit)
            .clamp(1, super::run::MAX_OUTPUT_LIMIT);
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let mut output =
            OutputCapture::new(&self.options().output_dir, limit, call.reporter.clone());
        let result = call
            .engine
            .run_logs(&a.run, a.follow, &mut output, &ctx.ct)
            .await;
        let (stdout, _) = output.finish(&call.secrets);
        let result = result.map(|()| LogsResult {
            run_id: a.run,
            output: stdout,
        });
        call.finish(result).await
    }
}
