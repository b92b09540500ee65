//! `shard`: one suite across many boxes at once, as `crabbox shard` does: the tree is synced
//! once and the box forked into the shards; each shard's command has `{{index}}`,
//! `{{total}}`, `{{lease}}`, `{{slug}}` substituted; one verdict comes back. An MCP cancel
//! stops every shard and releases every box.

use std::sync::{Arc, Mutex};

use crabbox_core::engine::{ShardOutcome, ShardRequest};
use crabbox_core::events::{OutputSink, Reporter};
use crabbox_core::plan::{plan_run, RunOptions};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::run::Command;
use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::output::{OutputCapture, StreamTail};
use crate::server::CrabboxServer;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ShardArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// How many shards, each on its own box (at most `shard.maxCount`, default 20).
    count: u32,
    /// The command template: `{{index}}` (1-based), `{{total}}`, `{{lease}}`, `{{slug}}`
    /// are substituted per shard; `CRABBOX_SHARD_INDEX` / `CRABBOX_SHARD_TOTAL` are set.
    command: Command,
    /// Sync to this leased box and fork it (default: a new box).
    #[serde(default)]
    id: Option<String>,
    /// The source box starts from this snapshot.
    #[serde(default)]
    from_snapshot: Option<String>,
    /// Stop the other shards at the first failure.
    #[serde(default)]
    fail_fast: bool,
    /// Globs of JUnit XML reports fetched from each shard and merged into the verdict.
    #[serde(default)]
    junit: Vec<String>,
    /// Keep every shard's box.
    #[serde(default)]
    keep: bool,
    /// Names of the server's environment variables to forward (as `--allow-env`).
    #[serde(default)]
    allow_env: Vec<String>,
    /// Bytes of the shards' (prefixed, interleaved) output the result holds (default 16384).
    #[serde(default)]
    max_output_bytes: Option<usize>,
}

/// The verdict, and the shards' output.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ShardToolResult {
    #[serde(flatten)]
    outcome: ShardOutcome,
    /// Every shard's stdout, each line prefixed `[i/N]`.
    stdout: StreamTail,
    stderr: StreamTail,
}

#[tool_router(router = shard_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// Run one suite across many boxes at once: sync once, fork the box into `count` shards,
    /// run the command template on each side by side, release every box, one verdict (exit
    /// code 0 when every shard passed, else the first failing shard's).
    #[tool(
        name = "shard",
        output_schema = schema::<ShardToolResult>(),
        annotations(open_world_hint = true)
    )]
    async fn shard(
        &self,
        Parameters(a): Parameters<ShardArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<ShardToolResult>, ToolError> {
        let (command, shell) = match a.command {
            Command::Shell(s) if !s.trim().is_empty() => (vec![s], true),
            Command::Argv(words) if !words.is_empty() => (words, false),
            _ => return Err(ToolError::invalid("command: it is empty")),
        };
        let limit = a
            .max_output_bytes
            .unwrap_or(self.options().output_limit)
            .clamp(1, super::run::MAX_OUTPUT_LIMIT);
        let cancel = ctx.ct.child_token();
        let _run = self.inner.inflight.run(cancel.clone());
        let call = self.call(&place!(a), vec![], &ctx).await?;
        let opts = RunOptions {
            id: a.id.clone(),
            command,
            shell,
            allow_env: a.allow_env,
            ..RunOptions::default()
        };
        let plan = match plan_run(&call.cfg, &call.env, opts, cancel.clone()).await {
            Ok(plan) => plan,
            Err(e) => {
                let e = ToolError::from_crabbox(&e, &call.secrets);
                return Err(call.fail(e).await);
            }
        };
        let r = plan.request;
        let req = ShardRequest {
            id: a.id,
            from_snapshot: a.from_snapshot,
            fail_fast: a.fail_fast,
            keep: a.keep,
            junit: a.junit,
            ..ShardRequest::of_run(r, a.count, call.cfg.core.shard.max_count, cancel)
        };
        let output = Arc::new(Mutex::new(OutputCapture::new(
            &self.options().output_dir,
            limit,
            call.reporter.clone(),
        )));
        let sink: Arc<Mutex<dyn OutputSink>> = output.clone();
        let result = call
            .engine
            .shard(&req, sink, call.reporter.as_ref() as &dyn Reporter)
            .await;
        let output = Arc::try_unwrap(output)
            .map(|m| m.into_inner().expect("output lock"))
            .unwrap_or_else(|_| {
                OutputCapture::new(&self.options().output_dir, limit, call.reporter.clone())
            });
        let (stdout, stderr) = output.finish(&call.secrets);
        let result = result.map(|outcome| ShardToolResult {
            outcome,
            stdout,
            stderr,
        });
        call.finish(result).await
    }
}
