//! `run`: sync the repository to a box and run a command there, as `crabbox run` does: the
//! exit code is in the result (a failing command is not a failed call), output as tails with
//! the whole in a file when cut, progress as notifications, and an MCP cancel stops the command
//! and its processes as Ctrl-C does (`timeoutSecs` is the engine's `--timeout`).

use std::collections::BTreeMap;
use std::time::Duration;

use crabbox_core::config::flag;
use crabbox_core::engine::{KeepPolicy, RunExtras, RunMode, RunOutcome};
use crabbox_core::events::Reporter;
use crabbox_core::plan::{plan_run, RunOptions};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{place, schema, Parameters};
use crate::failure::{Structured, ToolError};
use crate::output::{OutputCapture, StreamTail};
use crate::server::CrabboxServer;

/// Most bytes of each stream a result may hold.
pub(crate) const MAX_OUTPUT_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RunArgs {
    /// Repository directory to work in (absolute, or relative to the server's directory);
    /// its config files apply as in the CLI. Default: the server's directory.
    #[serde(default)]
    root: Option<String>,
    /// Provider (`local`, `e2b`) over the config's `provider` setting.
    #[serde(default)]
    provider: Option<String>,
    /// The command, run in the synced tree on the box with `bash -l -c`.
    command: Command,
    /// Run on this leased box (lease id `cbx_...`, slug, or the provider's id): only what
    /// changed is sent. Default: a fresh box, released when the run ends (see `keep`).
    #[serde(default)]
    id: Option<String>,
    /// Sync the working tree first (default true).
    #[serde(default = "yes")]
    sync: bool,
    /// Send the whole tree, whatever the box holds.
    #[serde(default)]
    full_resync: bool,
    /// Compare files by content hash instead of size and mtime.
    #[serde(default)]
    checksum: bool,
    /// Whether a fresh box is kept after the run (a leased box always is).
    #[serde(default)]
    keep: Keep,
    /// Variables to set for the command. crabbox's own credentials are refused.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Names of the server's environment variables to forward too (as `--allow-env`).
    #[serde(default)]
    allow_env: Vec<String>,
    /// Stop the command (SIGTERM, then SIGKILL, its whole process tree) after this many
    /// seconds: the result says `timedOut` (exit code 124). Default: the config's `timeout`.
    #[serde(default)]
    timeout_secs: Option<u64>,
    /// Bytes of each stream's end the result holds (default 16384, at most 1048576); the
    /// whole stream is kept in a file when it is longer.
    #[serde(default)]
    max_output_bytes: Option<usize>,
    /// A name for a fresh box's lease.
    #[serde(default)]
    slug: Option<String>,
    /// A fresh box starts with this snapshot's files (id or name; providers with snapshots).
    #[serde(default)]
    from_snapshot: Option<String>,
    /// Start the command in the background on the box and return at once with its run id
    /// (`runId`); `logs` shows its output. The box is kept.
    #[serde(default)]
    detach: bool,
    /// After the command (also when it failed), fetch the workdir's files matching these
    /// globs (`coverage/**`, `reports/*.xml`) into `<root>/.crabbox/artifacts/<lease>/`.
    #[serde(default)]
    artifact_globs: Vec<String>,
    /// Globs of JUnit XML reports to fetch and summarise in the result (`junit`).
    #[serde(default)]
    junit: Vec<String>,
    /// Sync a tree past the size limits (as `--force-sync-large`).
    #[serde(default)]
    force_sync_large: bool,
    /// Run in this workspace of the box: its own synced tree (default: the config's
    /// `workspace`, else `main`).
    #[serde(default)]
    workspace: Option<String>,
}

fn yes() -> bool {
    true
}

/// When a fresh box is kept.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
enum Keep {
    /// Release it when the run ends.
    #[default]
    Never,
    /// Keep it (its lease id is in the result).
    Always,
    /// Keep it when the command fails.
    OnFailure,
}

/// A command as shell source (a string) or as words (an array, each quoted).
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Shell(String),
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let expected = "a string (shell source) or an array of strings (argv)";
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Command::Shell(s)),
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(D::Error::custom(format!(
                        "command: expected {expected}, got an array holding {other}"
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(Command::Argv),
            other => Err(D::Error::custom(format!(
                "command: expected {expected}, got {other}"
            ))),
        }
    }
}

impl JsonSchema for Command {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Command".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Shell source (`cargo test && ls`), or argv words, each quoted \
                            (`[\"cargo\", \"test\"]`).",
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string"}, "minItems": 1}
            ]
        })
    }
}

/// How a run went.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunResult {
    /// The lease, the command's exit code, what became of the box, timings, sync figures.
    #[serde(flatten)]
    outcome: RunOutcome,
    /// The whole run, ms.
    total_ms: u64,
    stdout: StreamTail,
    stderr: StreamTail,
    /// What the user should know: files left out of the sync, variables not forwarded, output
    /// that was cut and where the whole of it is.
    warnings: Vec<String>,
}

#[tool_router(router = run_router, vis = "pub(crate)")]
impl CrabboxServer {
    /// Sync the working tree to a box and run a command there. A fresh box is made and
    /// released unless `id` names a leased one (from `warmup`). The command's exit code is
    /// in the result; a failing command is a result, not an error. Progress notifications
    /// carry sync phases and output lines; cancelling the call stops the command.
    #[tool(
        name = "run",
        output_schema = schema::<RunResult>(),
        annotations(open_world_hint = true)
    )]
    async fn run(
        &self,
        Parameters(a): Parameters<RunArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Structured<RunResult>, ToolError> {
        if a.detach && !(a.artifact_globs.is_empty() && a.junit.is_empty()) {
            return Err(ToolError::invalid(
                "artifactGlobs and junit fetch after the command ends: not with detach (use \
                 `download` later)",
            ));
        }
        let (command, shell) = match a.command {
            Command::Shell(s) if !s.trim().is_empty() => (vec![s], true),
            Command::Argv(words) if !words.is_empty() => (words, false),
            _ => return Err(ToolError::invalid("command: it is empty")),
        };
        let extra = if a.force_sync_large {
            vec![flag(
                "sync.allowLarge",
                "forceSyncLarge (tool argument)",
                true,
            )]
        } else {
            vec![]
        };
        let limit = a
            .max_output_bytes
            .unwrap_or(self.options().output_limit)
            .clamp(1, MAX_OUTPUT_LIMIT);
        let cancel = ctx.ct.child_token();
        // Before any await: a later call must see this run's cancel at once.
        let _run = self.inner.inflight.run(cancel.clone());
        let call = self.call(&place!(a), extra, &ctx).await?;
        let credentials = call.cfg.secret_env_vars();
        if let Some(bad) = a.env.keys().find(|k| credentials.contains(k)) {
            return Err(call
                .fail(ToolError::invalid(format!(
                    "env: {bad} is crabbox's own credential and never goes to a box"
                )))
                .await);
        }
        if let Some(bad) = a
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(call
                .fail(ToolError::invalid(format!(
                    "env: {bad:?} is not a variable name"
                )))
                .await);
        }
        let opts = RunOptions {
            id: a.id,
            command,
            shell,
            no_sync: !a.sync,
            full_resync: a.full_resync,
            checksum: a.checksum,
            keep: match a.keep {
                Keep::Never => KeepPolicy::Never,
                Keep::Always => KeepPolicy::Always,
                Keep::OnFailure => KeepPolicy::OnFailure,
            },
            slug: a.slug,
            allow_env: a.allow_env,
            extras: RunExtras {
                mode: if a.detach {
                    RunMode::Detached
                } else {
                    RunMode::Attached
                },
                artifact_globs: a.artifact_globs,
                junit: a.junit,
                timeout: a.timeout_secs.map(Duration::from_secs),
                workspace: a.workspace,
                ..Default::default()
            },
            from_snapshot: a.from_snapshot,
        };
        let plan = match plan_run(&call.cfg, &call.env, opts, cancel.clone()).await {
            Ok(plan) => plan,
            Err(e) => {
                let e = ToolError::from_crabbox(&e, &call.secrets);
                return Err(call.fail(e).await);
            }
        };
        for w in &plan.warnings {
            call.reporter.status(&format!("warning: {w}"));
        }
        let mut request = plan.request;
        request.env.extend(a.env);

        let started = std::time::Instant::now();
        let mut output =
            OutputCapture::new(&self.options().output_dir, limit, call.reporter.clone());
        let result = call
            .engine
            .run(&request, &mut output, call.reporter.as_ref())
            .await;
        let total_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (stdout, stderr) = output.finish(&call.secrets);
        match result {
            Ok(outcome) => {
                let mut warnings = plan.warnings;
                for (name, s) in [("stdout", &stdout), ("stderr", &stderr)] {
                    if let (true, Some(file)) = (s.truncated, &s.file) {
                        warnings.push(format!(
                            "{name} was {} bytes; the result holds its last {}, the whole is in {file}",
                            s.bytes,
                            s.tail.len()
                        ));
                    }
                }
                call.finish(Ok(RunResult {
                    outcome,
                    total_ms,
                    stdout,
                    stderr,
                    warnings,
                }))
                .await
            }
            Err(e) => {
                let mut text = if e.is_interrupted() {
                    "cancelled: the command and every process it started were stopped".into()
                } else {
                    let ToolError::Failed(r) = ToolError::from_crabbox(&e, &call.secrets) else {
                        let e = ToolError::from_crabbox(&e, &call.secrets);
                        return Err(call.fail(e).await);
                    };
                    r.content
                        .iter()
                        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                for (name, s) in [("stdout", &stdout), ("stderr", &stderr)] {
                    if s.bytes > 0 {
                        text.push_str(&format!(
                            "\n--- {name} ({} bytes{}) ---\n{}",
                            s.bytes,
                            s.file
                                .as_deref()
                                .map(|f| format!("; whole in {f}"))
                                .unwrap_or_default(),
                            s.tail
                        ));
                    }
                }
                let e = ToolError::failed(&text, &call.secrets);
                Err(call.fail(e).await)
            }
        }
    }
}
